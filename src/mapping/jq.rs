//! The jq side of mappings: compiling programs with the jaq crates, the
//! helpers mappings use, and running a program within bounds.
//!
//! A program runs with no I/O (`env`, `now`, `input`, `halt` and the log
//! filters are left out: a mapping must give the same events on every
//! replay) and within two bounds, checked at every evaluation step (jaq asks
//! its [`Data`](jaq_core::DataT::Data) for the look-up table at each term it
//! evaluates, which is where the step is counted):
//! - a deadline: a loop that never ends is stopped;
//! - a stack depth: a recursion that never ends is stopped before it
//!   overflows the thread's stack (which would abort the process).
//!
//! Both stop the program by unwinding with a [`Runaway`] payload, caught
//! where the program was started. jaq is safe Rust over reference-counted
//! values, so unwinding through it leaves nothing behind but dropped values.
//!
//! A third bound is on size (src/mapping/jq/bounds.rs): the operations that can grow a
//! value past 16 MiB of text or 2^20 items in one step fail instead, as an
//! error of the program.

mod bounds;

use std::cell::Cell;
use std::sync::Once;
use std::time::{Duration, Instant};

use jaq_core::load::{Arena, File, Loader};
use jaq_core::native::{Fun, bome, run, v};
use jaq_core::{Ctx, DataT, Lut, Vars, data::HasLut};
use jaq_json::{Num, Rc, Val};
use jaq_std::ValT as _;

/// The variables every program may read, in the order their values are
/// given to [`Program::run`].
pub const GLOBALS: [&str; 4] = ["$topic", "$key", "$headers", "$vars"];

/// Filters left out: they read the environment, the clock or the input
/// stream.
const WITHOUT: [&str; 4] = ["env", "now", "input", "inputs"];

/// Filters the standard definitions build on (`debug`, `halt_error`...),
/// which stop the process or write to the log: they stay defined, and fail
/// when run.
const REFUSED: [(&str, usize); 3] = [("halt", 1), ("debug_empty", 0), ("stderr_empty", 0)];

/// How deep a program's evaluation may go on the stack of the thread that
/// runs it (which has [`STACK_BYTES`]).
const STACK_ALLOWANCE: usize = 48 << 20;

/// The stack of the thread that runs programs: room for deep (but finite)
/// recursion over input bounded at 128 levels of nesting.
pub const STACK_BYTES: usize = 64 << 20;

/// How often (in steps) the deadline is read: reading the clock at every
/// step would cost more than most steps.
const CLOCK_EVERY: u64 = 1024;

/// A compiled program.
pub struct Program {
    filter: jaq_core::Filter<Bounded>,
}

/// The data of a run: the look-up table, and the bounds it is held to.
pub struct Bounded;

impl DataT for Bounded {
    type V<'a> = Val;
    type Data<'a> = &'a Budget<'a>;
}

pub struct Budget<'a> {
    lut: &'a Lut<Bounded>,
    steps: Cell<u64>,
    deadline: Instant,
    /// The lowest stack address evaluation may reach (stacks grow down).
    stack_floor: usize,
}

impl<'a> HasLut<'a, Bounded> for &'a Budget<'a> {
    fn lut(&self) -> &'a Lut<Bounded> {
        self.tick();
        self.lut
    }
}

impl Budget<'_> {
    /// One step: stops the program past its deadline or stack allowance.
    fn tick(&self) {
        let steps = self.steps.get() + 1;
        self.steps.set(steps);
        let here = 0u8;
        if std::ptr::from_ref(&here) as usize <= self.stack_floor {
            std::panic::panic_any(Runaway::TooDeep);
        }
        if steps.is_multiple_of(CLOCK_EVERY) && Instant::now() >= self.deadline {
            std::panic::panic_any(Runaway::TooLong);
        }
    }
}

/// Why a program was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runaway {
    TooLong,
    TooDeep,
}

/// A compile error, with where it is in the program's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// 1-based line and column within the program.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Why a run gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The program raised an error (`error(...)`, a type error...).
    #[error("{0}")]
    Failed(String),
    #[error("stopped after {0:?}: the program runs too long")]
    TooLong(Duration),
    #[error("stopped: the program recurses too deep")]
    TooDeep,
    #[error("more than {0} results")]
    TooMany(usize),
}

/// Natives of jaq replaced by bounded ones (see [`bounds`]).
const REPLACED: [(&str, usize); 2] = [("range", 3), ("tojson", 0)];

fn funs() -> impl Iterator<Item = Fun<Bounded>> {
    jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, args, _)| {
            !WITHOUT.contains(name) && !REFUSED.contains(&(*name, args.len()))
        })
        .filter(|(name, args, _)| !REPLACED.contains(&(*name, args.len())))
        // Checked in prelude.jq before it runs.
        .map(|(name, args, f)| match name {
            "explode" => ("_explode", args, f),
            _ => (name, args, f),
        })
        .chain(helpers())
        .chain(bounds::funs())
        .chain(REFUSED.iter().map(|&(name, arity)| {
            let refuse: jaq_core::RunPtr<Bounded> = |_| {
                bome(Err(error(
                    "not available in a mapping (no I/O: halt, debug, stderr, input, env, now)",
                )))
            };
            run::<Bounded>((name, v(arity), refuse))
        }))
}

/// The native helpers (the others are in prelude.jq).
fn helpers() -> impl Iterator<Item = Fun<Bounded>> {
    let helpers: [jaq_core::native::Filter<jaq_core::RunPtr<Bounded>>; 5] = [
        // jaq's own `range/3`, but each value a step: its values are made
        // and consumed in native code (`last`, `[...]`, `limit`), where no
        // term is evaluated to count them.
        ("range", v(3), |mut cv| {
            let budget: &Budget = cv.0.data();
            let by = cv.0.pop_var();
            let to = cv.0.pop_var();
            let mut next = Some(cv.0.pop_var());
            let rising = by > Val::from(0usize);
            let falling = by < Val::from(0usize);
            Box::new(std::iter::from_fn(move || {
                budget.tick();
                let x = next.take()?;
                let more = if rising {
                    x < to
                } else if falling {
                    x > to
                } else {
                    x != to
                };
                if !more {
                    return None;
                }
                match x.clone() + by.clone() {
                    Ok(after) => next = Some(after),
                    Err(e) => return Some(Err(jaq_core::Exn::from(e))),
                }
                Some(Ok(x))
            }))
        }),
        ("money", v(0), |cv| bome(money(cv.1))),
        ("minor_units", v(1), |mut cv| {
            let digits = cv.0.pop_var();
            bome(minor_units(cv.1, digits))
        }),
        ("timestamp", v(0), |cv| bome(timestamp(cv.1, None))),
        ("zoned", v(1), |mut cv| {
            let zone = cv.0.pop_var();
            bome(match as_str(&zone) {
                Ok(zone) => timestamp(cv.1, Some(zone)),
                Err(_) => Err(error(format!(
                    "zoned: the zone must be a string, not {zone}"
                ))),
            })
        }),
    ];
    helpers.into_iter().map(run::<Bounded>)
}

/// A string's text (a string of bytes that is not UTF-8 is refused).
fn as_str(v: &Val) -> Result<&str, jaq_core::Error<Val>> {
    v.as_utf8_bytes()
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| error(format!("expected a text string, not {}", type_name(v))))
}

fn error(message: impl ToString) -> jaq_core::Error<Val> {
    jaq_core::Error::str(message)
}

fn text(s: String) -> Val {
    Val::utf8_str(s.into_bytes())
}

/// A number or decimal string as a decimal string, read from its text (a
/// number from the JSON keeps its literal text in jaq).
fn money(v: Val) -> Result<Val, jaq_core::Error<Val>> {
    match &v {
        Val::Null => Ok(Val::Null),
        Val::Num(Num::Float(x)) if !x.is_finite() => Err(error("money: not a finite number")),
        Val::Num(n) => Ok(text(n.to_string())),
        Val::TStr(_) => Ok(text(as_str(&v)?.trim().to_owned())),
        other => Err(error(format!(
            "money: expected a number or a decimal string, not {}",
            type_name(other)
        ))),
    }
}

/// An integer amount of minor units (cents) as a decimal string with
/// `digits` places: `1999 | minor_units(2)` is "19.99".
fn minor_units(v: Val, digits: Val) -> Result<Val, jaq_core::Error<Val>> {
    let digits = match digits.as_isize() {
        Some(d @ 0..=18) => d as usize,
        _ => {
            return Err(error(format!(
                "minor_units: digits must be 0 to 18, not {digits}"
            )));
        }
    };
    let units = match &v {
        Val::Null => return Ok(Val::Null),
        Val::Num(n @ (Num::Int(_) | Num::BigInt(_))) => n.to_string(),
        Val::TStr(_) => as_str(&v)?.trim().to_owned(),
        other => {
            return Err(error(format!(
                "minor_units: expected an integer, not {}",
                type_name(other)
            )));
        }
    };
    let (sign, magnitude) = match units.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", units.as_str()),
    };
    if magnitude.is_empty() || !magnitude.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error(format!("minor_units: `{units}` is not an integer")));
    }
    if digits == 0 {
        return Ok(text(format!("{sign}{magnitude}")));
    }
    let padded = format!("{magnitude:0>width$}", width = digits + 1);
    let (whole, fraction) = padded.split_at(padded.len() - digits);
    Ok(text(format!("{sign}{whole}.{fraction}")))
}

/// A time as RFC 3339 in UTC: from RFC 3339 with a zone, from Unix seconds,
/// or (with `zone`) from a naive local time in that IANA zone.
fn timestamp(v: Val, zone: Option<&str>) -> Result<Val, jaq_core::Error<Val>> {
    use jiff::Timestamp;
    let name = if zone.is_some() { "zoned" } else { "timestamp" };
    let at = match &v {
        Val::Null => return Ok(Val::Null),
        Val::Num(n) => {
            let seconds = match n {
                Num::Int(i) => Some(*i as f64),
                other => other.to_string().parse::<f64>().ok(),
            };
            seconds
                .filter(|s| s.is_finite())
                .and_then(|s| {
                    Timestamp::from_duration(jiff::SignedDuration::try_from_secs_f64(s).ok()?).ok()
                })
                .ok_or_else(|| error(format!("{name}: {n} is not a time in Unix seconds")))?
        }
        Val::TStr(_) => {
            let s = as_str(&v)?.trim();
            match (s.parse::<Timestamp>(), zone) {
                (Ok(t), _) => t,
                (Err(_), Some(zone)) => {
                    let civil: jiff::civil::DateTime = s
                        .parse()
                        .map_err(|e| error(format!("{name}: `{}` is not a time: {e}", shown(s))))?;
                    let tz = jiff::tz::TimeZone::get(zone).map_err(|_| {
                        error(format!("{name}: unknown time zone `{}`", shown(zone)))
                    })?;
                    civil
                        .to_zoned(tz)
                        .map_err(|e| error(format!("{name}: {e}")))?
                        .timestamp()
                }
                (Err(_), None) if s.parse::<jiff::civil::DateTime>().is_ok() => {
                    return Err(error(format!(
                        "timestamp: `{}` has no zone: use zoned(\"Area/City\")",
                        shown(s)
                    )));
                }
                (Err(e), None) => {
                    return Err(error(format!(
                        "timestamp: `{}` is not a time: {e}",
                        shown(s)
                    )));
                }
            }
        }
        other => {
            return Err(error(format!(
                "{name}: expected a string or a number, not {}",
                type_name(other)
            )));
        }
    };
    Ok(text(at.to_string()))
}

fn shown(s: &str) -> String {
    crate::bounded::clip(s, 40).into_owned()
}

fn type_name(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Bool(_) => "a boolean",
        Val::Num(_) => "a number",
        Val::TStr(_) | Val::BStr(_) => "a string",
        Val::Arr(_) => "an array",
        Val::Obj(_) => "an object",
    }
}

/// jaq's definitions and prelude.jq, [`bounds::bounded`]; jaq's
/// `tostring` is a native here.
fn definitions() -> impl Iterator<Item = jaq_core::load::parse::Def<&'static str>> {
    let prelude =
        jaq_core::load::parse(include_str!("prelude.jq"), |p| p.defs()).expect("prelude.jq parses");
    bounds::defs()
        .chain(jaq_core::defs())
        .filter(|d| !(d.name == "tostring" && d.args.is_empty()))
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .chain(prelude)
        .map(bounds::def)
}

impl Program {
    /// Compiles `code`, which may use the [`GLOBALS`] and the helpers.
    pub fn compile(code: &str) -> Result<Program, Vec<CompileError>> {
        let arena = Arena::default();
        // Loaded as written for its errors, then compiled as its bounded
        // form, a definition called as the main program.
        Loader::new(definitions())
            .load(&arena, File { code, path: () })
            .map_err(|errors| load_errors(code, errors))?;
        let body = jaq_core::load::parse(code, |p| p.term()).ok_or_else(|| {
            vec![CompileError {
                line: 1,
                column: 1,
                message: "modules are not available in a mapping".to_owned(),
            }]
        })?;
        let main = jaq_core::load::parse::Def {
            name: "_mapping",
            args: Vec::new(),
            body: bounds::bounded(body),
        };
        let mut defs: Vec<jaq_core::load::parse::Def<&str>> = definitions().collect();
        defs.push(main);
        let modules = Loader::new(defs)
            .load(
                &arena,
                File {
                    code: "_mapping",
                    path: (),
                },
            )
            .map_err(|errors| load_errors(code, errors))?;
        let filter = jaq_core::Compiler::default()
            .with_funs(funs())
            .with_global_vars(GLOBALS)
            .compile(modules)
            .map_err(|errors| {
                errors
                    .into_iter()
                    .flat_map(|(_, errors)| errors)
                    .map(|(found, undefined)| {
                        at(
                            code,
                            found,
                            format!("undefined {} `{found}`", undefined.as_str()),
                        )
                    })
                    .collect::<Vec<_>>()
            })?;
        Ok(Program { filter })
    }

    /// Runs the program on `input` with the [`GLOBALS`]' values, collecting
    /// at most `max` results, within `timeout`.
    ///
    /// Must run on a thread with a [`STACK_BYTES`] stack.
    pub fn run(
        &self,
        input: Val,
        globals: [Val; 4],
        timeout: Duration,
        max: usize,
    ) -> Result<Vec<Val>, RunError> {
        quiet_runaways();
        let here = 0u8;
        let budget = Budget {
            lut: &self.filter.lut,
            steps: Cell::new(0),
            deadline: Instant::now() + timeout,
            stack_floor: (std::ptr::from_ref(&here) as usize).saturating_sub(STACK_ALLOWANCE),
        };
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ctx = Ctx::<Bounded>::new(&budget, Vars::new(globals));
            let mut results = Vec::new();
            for result in self.filter.id.run((ctx, input)) {
                match jaq_core::unwrap_valr(result) {
                    Ok(v) if results.len() < max => results.push(v),
                    Ok(_) => return Err(RunError::TooMany(max)),
                    Err(e) => return Err(RunError::Failed(clean_error(&e))),
                }
            }
            Ok(results)
        }));
        match ran {
            Ok(result) => result,
            Err(payload) => match payload.downcast_ref::<Runaway>() {
                Some(Runaway::TooLong) => Err(RunError::TooLong(timeout)),
                Some(Runaway::TooDeep) => Err(RunError::TooDeep),
                None => std::panic::resume_unwind(payload),
            },
        }
    }
}

/// The longest error reason, in bytes.
const REASON_BYTES: usize = 300;

/// A failed run's reason: the value of `error(v)` (and of the helpers'
/// errors) as a string's own text, or another value as compact JSON; jaq's
/// own messages (type errors...) as they read. Never more of a large value
/// is formatted than the reason shows.
fn clean_error(e: &jaq_core::Error<Val>) -> String {
    let text = if is_raised_value(e) {
        match e.clone().into_val() {
            Val::TStr(b) | Val::BStr(b) => {
                String::from_utf8_lossy(crate::bounded::prefix(&b, REASON_BYTES + 1)).into_owned()
            }
            other => head(&other, REASON_BYTES + 1),
        }
    } else {
        head(e, REASON_BYTES + 1)
    };
    crate::bounded::clip(&text, REASON_BYTES).into_owned()
}

/// Whether `e` is a value raised as it is (`error(v)`, `Error::str`)
/// rather than a message jaq composed around values. jaq keeps that apart
/// only in its `Debug` form, whose first bytes are read.
fn is_raised_value(e: &jaq_core::Error<Val>) -> bool {
    head(format_args!("{e:?}"), 10) == "Error(Val("
}

/// At most the first `max` bytes of `shown`'s text: formatting stops there.
fn head(shown: impl std::fmt::Display, max: usize) -> String {
    let mut head = Head {
        text: String::new(),
        max,
    };
    // An error means the text was cut: what was kept is the head.
    let _ = std::fmt::Write::write_fmt(&mut head, format_args!("{shown}"));
    head.text
}

/// A text that takes at most `max` bytes, then refuses the rest (which
/// stops the formatting that writes into it).
struct Head {
    text: String,
    max: usize,
}

impl std::fmt::Write for Head {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.max - self.text.len();
        if s.len() <= room {
            self.text.push_str(s);
            Ok(())
        } else {
            self.text.push_str(&s[..s.floor_char_boundary(room)]);
            Err(std::fmt::Error)
        }
    }
}

/// The default panic hook prints every panic; a stopped program is not a
/// bug, so its unwinding prints nothing.
fn quiet_runaways() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Runaway>().is_none() {
                previous(info);
            }
        }));
    });
}

fn load_errors(code: &str, errors: jaq_core::load::Errors<&str, ()>) -> Vec<CompileError> {
    use jaq_core::load::Error;
    let mut out = Vec::new();
    for (_, error) in errors {
        match error {
            Error::Io(errors) => {
                for (path, why) in errors {
                    out.push(at(code, path, format!("cannot load `{path}`: {why}")));
                }
            }
            Error::Lex(errors) => {
                for (expected, found) in errors {
                    let what = match found.chars().next() {
                        None => "unexpected end of the program".to_owned(),
                        Some(c) => format!("unexpected `{c}`"),
                    };
                    out.push(at(
                        code,
                        found,
                        format!("{what}; expected {}", expected.as_str()),
                    ));
                }
            }
            Error::Parse(errors) => {
                for (expected, found) in errors {
                    let what = if found.is_empty() {
                        "unexpected end of the program".to_owned()
                    } else {
                        format!("unexpected `{}`", shown(found))
                    };
                    out.push(at(
                        code,
                        found,
                        format!("{what}; expected {}", expected.as_str()),
                    ));
                }
            }
        }
    }
    out
}

/// A message at the place of `part`, a slice of `code`.
fn at(code: &str, part: &str, message: String) -> CompileError {
    let offset = (part.as_ptr() as usize)
        .checked_sub(code.as_ptr() as usize)
        .filter(|o| *o <= code.len())
        .unwrap_or(code.len());
    let before = &code[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    CompileError {
        line,
        column,
        message,
    }
}

/// A JSON value (from serde_json, whose parser bounds nesting at 128) as
/// a jaq value. Numbers keep their literal text.
pub fn from_json(value: &serde_json::Value) -> Val {
    use serde_json::Value;
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => {
            let literal = n.to_string();
            Val::Num(
                Num::from_str_radix(&literal, 10).unwrap_or_else(|| Num::Dec(Rc::new(literal))),
            )
        }
        Value::String(s) => text(s.clone()),
        Value::Array(items) => Val::Arr(Rc::new(items.iter().map(from_json).collect())),
        Value::Object(fields) => Val::obj(
            fields
                .iter()
                .map(|(k, v)| (text(k.clone()), from_json(v)))
                .collect(),
        ),
    }
}

/// A string value.
pub fn string(s: &str) -> Val {
    text(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(code: &str, input: &str) -> Result<Vec<String>, RunError> {
        let (code, input) = (code.to_owned(), input.to_owned());
        std::thread::Builder::new()
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let program = Program::compile(&code).unwrap_or_else(|e| panic!("{code}: {e:?}"));
                let input: serde_json::Value = serde_json::from_str(&input).unwrap();
                let globals = [
                    string("orders"),
                    Val::Null,
                    from_json(&serde_json::json!({"x-topic": "orders/create"})),
                    from_json(&serde_json::json!({"timezone": "America/New_York"})),
                ];
                program
                    .run(from_json(&input), globals, Duration::from_millis(300), 10)
                    .map(|vs| vs.iter().map(|v| v.to_string()).collect())
            })
            .unwrap()
            .join()
            .unwrap()
    }

    fn one(code: &str, input: &str) -> String {
        let out = run_on(code, input).unwrap_or_else(|e| panic!("{code}: {e}"));
        assert_eq!(out.len(), 1, "{code}: {out:?}");
        out.into_iter().next().unwrap()
    }

    #[test]
    fn numbers_keep_every_digit_and_their_literal_text() {
        assert_eq!(
            one(".id | id", r#"{"id": 9007199254740993123}"#),
            r#""9007199254740993123""#
        );
        assert_eq!(one(".p | money", r#"{"p": 59.90}"#), r#""59.90""#);
        assert_eq!(one(".p | money", r#"{"p": " 18500 "}"#), r#""18500""#);
        assert_eq!(one(".p | money", r#"{"p": null}"#), "null");
        assert!(
            matches!(run_on(".p | money", r#"{"p": {}}"#), Err(RunError::Failed(e)) if e.contains("not an object"))
        );
    }

    #[test]
    fn minor_units_place_the_point() {
        assert_eq!(one("1999 | minor_units(2)", "null"), r#""19.99""#);
        assert_eq!(one("5 | minor_units(2)", "null"), r#""0.05""#);
        assert_eq!(one("-5 | minor_units(3)", "null"), r#""-0.005""#);
        assert_eq!(one("\"18500\" | minor_units(0)", "null"), r#""18500""#);
        assert_eq!(
            one("123456789012345678901234 | minor_units(2)", "null"),
            r#""1234567890123456789012.34""#
        );
        assert!(run_on("1.5 | minor_units(2)", "null").is_err());
        assert!(run_on("\"1e3\" | minor_units(2)", "null").is_err());
        assert!(run_on("100 | minor_units(19)", "null").is_err());
    }

    #[test]
    fn times_need_a_zone_or_are_given_one() {
        assert_eq!(
            one("\"2026-01-08T10:00:00-05:00\" | timestamp", "null"),
            r#""2026-01-08T15:00:00Z""#
        );
        assert_eq!(
            one("1767225600 | timestamp", "null"),
            r#""2026-01-01T00:00:00Z""#
        );
        let naive = run_on("\"2026-01-08T10:00:00\" | timestamp", "null");
        assert!(matches!(naive, Err(RunError::Failed(e)) if e.contains("no zone")));
        assert_eq!(
            one("\"2026-01-08T10:00:00\" | zoned($vars.timezone)", "null"),
            r#""2026-01-08T15:00:00Z""#
        );
        assert_eq!(
            one("\"2026-07-08 10:00:00\" | zoned(\"Asia/Yerevan\")", "null"),
            r#""2026-07-08T06:00:00Z""#
        );
        assert!(run_on("\"2026-01-08T10:00:00\" | zoned(\"Mars/Olympus\")", "null").is_err());
    }

    #[test]
    fn globals_and_prelude_are_there() {
        assert_eq!(
            one("[$topic, $key, header(\"X-Topic\")]", "null"),
            r#"["orders",null,"orders/create"]"#
        );
        assert_eq!(
            one("{a: null, b: [{c: null, d: 1}]} | compact", "null"),
            r#"{"b":[{"d":1}]}"#
        );
    }

    #[test]
    fn no_io_filters() {
        for code in ["env", "now", "input", "inputs", "$ENV"] {
            let compiled = Program::compile(code);
            assert!(compiled.is_err(), "`{code}` compiled");
        }
        for code in ["halt", "halt_error", "debug", "stderr", "debug(\"x\")"] {
            let ran = run_on(code, "1");
            assert!(
                matches!(&ran, Err(RunError::Failed(e)) if e.contains("not available in a mapping")),
                "`{code}`: {ran:?}"
            );
        }
    }

    #[test]
    fn runaway_programs_are_stopped() {
        let too_long = RunError::TooLong(Duration::from_millis(300));
        let cases = [
            ("def f: f; f", too_long.clone()),
            ("last(range(1e18))", too_long),
            ("def f: 1 + f; f", RunError::TooDeep),
            ("repeat(1)", RunError::TooMany(10)),
        ];
        for (code, stopped) in cases {
            assert_eq!(run_on(code, "null"), Err(stopped), "`{code}`");
        }
    }

    #[test]
    fn errors_read_as_their_text_or_compact_json() {
        let failed = |code: &str| match run_on(code, "null") {
            Err(RunError::Failed(reason)) => reason,
            other => panic!("`{code}`: {other:?}"),
        };
        assert_eq!(failed(r#"error("some text")"#), "some text");
        assert_eq!(
            failed(r#"error("a \"quoted\" word\nand a line")"#),
            "a \"quoted\" word\nand a line"
        );
        assert_eq!(
            failed(r#"error({a: 1, b: [null, "x"]})"#),
            r#"{"a":1,"b":[null,"x"]}"#
        );
        assert_eq!(failed("error(42)"), "42");
        assert_eq!(failed("error(null)"), "null");
        assert_eq!(
            failed("{} | money"),
            "money: expected a number or a decimal string, not an object"
        );
        // jaq's own messages read as before, values in them as JSON.
        assert_eq!(failed("[] | .a"), r#"cannot index [] with "a""#);
        // A large value is cut, never formatted whole.
        let long = failed(r#"error("x" * 100000)"#);
        assert!(
            long.len() <= 300 && long.starts_with("xxx") && long.ends_with('…'),
            "{long}"
        );
        let long = failed("[range(100000)] | error");
        assert!(long.len() <= 300 && long.starts_with("[0,1,2,"), "{long}");
        let long = failed("[range(100000)] | .a");
        assert!(
            long.len() <= 300 && long.starts_with("cannot index [0,1,"),
            "{long}"
        );
    }

    #[test]
    fn values_that_outgrow_a_bound_in_a_few_steps_are_refused() {
        let cases = [
            // A string repeated.
            (
                r#""x" * 100000000"#,
                "*: a string of 100000000 bytes exceeds",
            ),
            (r#""xy" * 100000000000000000000000"#, "*: a string of"),
            (
                r#"{a: "x"} | .a *= 100000000 | .a | length"#,
                "*: a string of",
            ),
            // Doubling, by `+`, `+=`, interpolation, `add`, `join`.
            (
                r#""x" | def f: . + . | f; f"#,
                "+: a string of 33554432 bytes exceeds",
            ),
            (r#"{a: "x"} | def f: .a += .a | f; f"#, "+: a string of"),
            (r#""x" | def f: "\(.)\(.)" | f; f"#, "tostring: a string of"),
            (r#""x" | def f: [., .] | add | f; f"#, "+: a string of"),
            (r#""x" | def f: [., .] | join("") | f; f"#, "+: a string of"),
            (
                r#"[1] | def f: . + . | f; f"#,
                "+: an array of 2097152 items exceeds",
            ),
            // Written out: a value shared many times is large as text.
            (
                r#""x" * 1000 | reduce range(20) as $i (.; [., .]) | tojson"#,
                "tojson: the text exceeds",
            ),
            (
                r#""x" * 1000 | reduce range(20) as $i (.; [., .]) | tostring"#,
                "tostring: the text exceeds",
            ),
            (
                r#""x" * 1000 | reduce range(20) as $i (.; [., .]) | "\(.)""#,
                "tostring: the text exceeds",
            ),
            (
                r#""x" * 1000 | reduce range(20) as $i (.; [., .]) | @base64"#,
                "tostring: the text exceeds",
            ),
            (
                r#""x" * 2000000 | explode"#,
                "explode: a string of more than",
            ),
            (
                r#""x" * 2000000 | . / """#,
                "/: a split into 2000000 parts exceeds",
            ),
            (
                r#""x," * 2000000 | split(",")"#,
                "/: a split into 2000001 parts exceeds",
            ),
            (r#"10 | def f: . * . | f; f"#, "*: a product of "),
        ];
        for (code, refused) in cases {
            let ran = run_on(code, "null");
            assert!(
                matches!(&ran, Err(RunError::Failed(e)) if e.starts_with(refused) && e.contains("exceeds")),
                "`{code}`: {ran:?}"
            );
        }
        // Arrays collected: each item is a step, so the deadline may come
        // before the bound (as it does in a debug build).
        for code in [
            "[range(1e8)] | length",
            "[limit(1e8; repeat(1))] | length",
            "[1] | def f: [.[], .[]] | f; f",
        ] {
            let ran = run_on(code, "null");
            assert!(
                matches!(&ran, Err(RunError::TooLong(_)))
                    || matches!(&ran, Err(RunError::Failed(e)) if e.starts_with("an array of more than 1048576 items")),
                "`{code}`: {ran:?}"
            );
        }
    }

    #[test]
    fn the_bounded_operators_do_what_jq_does() {
        let cases = [
            (r#"[(1, 2) + (10, 20)]"#, "[11,21,12,22]"),
            (r#"[(1, 2) * (10, 20)]"#, "[10,20,20,40]"),
            (r#""ab" * 3"#, r#""ababab""#),
            (r#"3 * "ab""#, r#""ababab""#),
            (r#""ab" * 0"#, "null"),
            (r#""ab" * -100000000000000000000000"#, "null"),
            (r#"{a: {b: 1}} * {a: {c: 2}}"#, r#"{"a":{"b":1,"c":2}}"#),
            (r#"null + "x" + null"#, r#""x""#),
            (r#"[1] + [2] + []"#, "[1,2]"),
            (r#"{a: 1} + {b: 2}"#, r#"{"a":1,"b":2}"#),
            (
                r#"{a: [1], n: 2} | .a += [2] | .n *= 3 | .n += 1"#,
                r#"{"a":[1,2],"n":7}"#,
            ),
            (r#"[.[]?, (1, 2)]"#, "[1,2]"),
            (r#"[]"#, "[]"),
            (
                r#""id-\(1 + 1)-\([1, "a"])-\("x")""#,
                r#""id-2-[1,\"a\"]-x""#,
            ),
            (r#"@base64 "\("hi")!""#, r#""aGk=!""#),
            (
                r#"[1, "é", null] | tojson, tostring"#,
                r#""[1,\"é\",null]""#,
            ),
            (r#""é" | explode | implode"#, r#""é""#),
            (r#"[1, 2, 3] | add, join("-")"#, "6"),
            (
                r#"[("a,b" / ","), ("ab" / ""), (7 / 2)]"#,
                r#"[["a","b"],["a","b"],3.5]"#,
            ),
            (r#"[(4, 6) / (2, 1)]"#, "[2.0,4.0,3.0,6.0]"),
            (r#"4294967296 * 4294967296"#, "18446744073709551616"),
            (r#"try ("x" * 1e18) catch "caught""#, r#""caught""#),
        ];
        for (code, first) in cases {
            let out = run_on(code, "null").unwrap_or_else(|e| panic!("`{code}`: {e}"));
            assert_eq!(out[0], first, "`{code}`: {out:?}");
        }
        assert_eq!(
            run_on(r#"[1, 2, 3] | join("-")"#, "null"),
            Ok(vec![r#""1-2-3""#.to_owned()])
        );
    }

    #[test]
    fn compile_errors_say_where() {
        let errors = Program::compile("{a: 1,\n  b: .x | nosuch(1)}")
            .err()
            .unwrap();
        assert_eq!((errors[0].line, errors[0].column), (2, 11), "{errors:?}");
        assert!(errors[0].message.contains("`nosuch`"), "{errors:?}");
        let errors = Program::compile("{a: (1 + }").err().unwrap();
        assert_eq!(errors[0].line, 1, "{errors:?}");
    }
}
