//! Size bounds on the values a program builds.
//!
//! The deadline stops a program that runs long, but not one that fills the
//! memory in a few steps: `"x" * 1e12` or `def f: . + . | f` ask for more
//! than the machine has long before the deadline, and a failed allocation
//! aborts the whole worker. So the operations that can grow a value by
//! more than a constant in one step refuse a string over [`MAX_TEXT`] bytes
//! or an array over [`MAX_ITEMS`] items, with an error that dead-letters
//! the message:
//! - `+` and `+=` (strings and arrays), `*` and `*=` (a string repeated;
//!   a product of integers over [`MAX_PRODUCT_BITS`], which would take long
//!   in one step), `/` (a string split into more than [`MAX_ITEMS`] parts);
//! - `[...]`, which also counts a step per item (a generator made in
//!   native code, such as `.[]`, evaluates no term per item);
//! - `tostring`, `tojson` and string interpolation, written into a bounded
//!   buffer (never more than the bound is written);
//! - `explode`.
//!
//! The operators and `[...]` are compiled into jaq's own evaluation, so
//! they are rewritten, in the program and in the standard definitions, into
//! calls of the natives here, which do what jaq does after the check.
//! What stays unbounded is listed in BENCHMARKS.md ("Mapping").

use jaq_core::box_iter::{box_once, flat_map_with, map_with};
use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Def, Pattern, Term};
use jaq_core::native::{Fun, bome, run, v};
use jaq_core::ops::Math;
use jaq_core::{Bind, Cv, ValXs};
use jaq_json::{Num, Rc, Val};

use super::{Bounded, Budget, error};

/// The longest string a program may build, in bytes.
pub const MAX_TEXT: usize = 16 << 20;

/// The most items an array a program builds may have.
pub const MAX_ITEMS: usize = 1 << 20;

/// `t` with the operations that can outgrow a bound in one step made calls
/// of the bounded natives.
pub fn bounded<'s>(t: Term<&'s str>) -> Term<&'s str> {
    let b = |t: Box<Term<&'s str>>| Box::new(bounded(*t));
    let all = |ts: Vec<Term<&'s str>>| ts.into_iter().map(bounded).collect::<Vec<_>>();
    match t {
        Term::Id | Term::Recurse | Term::Num(_) | Term::Var(_) | Term::Break(_) => t,
        Term::Str(format, parts) => {
            let parts = parts
                .into_iter()
                .map(|part| match part {
                    StrPart::Term(t) => StrPart::Term(bounded(t)),
                    other => other,
                })
                .collect();
            // Without a format, jaq writes a value interpolated unbounded.
            Term::Str(Some(format.unwrap_or("tostring")), parts)
        }
        Term::Arr(None) => Term::Arr(None),
        Term::Arr(Some(items)) => Term::Call("_collect", vec![bounded(*items)]),
        Term::Obj(entries) => Term::Obj(
            entries
                .into_iter()
                .map(|(k, v)| (bounded(k), v.map(bounded)))
                .collect(),
        ),
        Term::Neg(t) => Term::Neg(b(t)),
        Term::BinOp(l, op, r) => {
            let (l, r) = (bounded(*l), bounded(*r));
            match op {
                BinaryOp::Math(Math::Add) => Term::Call("_plus", vec![l, r]),
                BinaryOp::Math(Math::Mul) => Term::Call("_times", vec![l, r]),
                BinaryOp::Math(Math::Div) => Term::Call("_divide", vec![l, r]),
                BinaryOp::UpdateMath(Math::Add) => Term::Call("_plus_update", vec![l, r]),
                BinaryOp::UpdateMath(Math::Mul) => Term::Call("_times_update", vec![l, r]),
                BinaryOp::Pipe(Some(p)) => {
                    Term::BinOp(Box::new(l), BinaryOp::Pipe(Some(pattern(p))), Box::new(r))
                }
                op => Term::BinOp(Box::new(l), op, Box::new(r)),
            }
        }
        Term::Label(name, t) => Term::Label(name, b(t)),
        Term::Fold(name, xs, p, args) => Term::Fold(name, b(xs), pattern(p), all(args)),
        Term::TryCatch(t, catch) => Term::TryCatch(b(t), catch.map(b)),
        Term::IfThenElse(branches, otherwise) => Term::IfThenElse(
            branches
                .into_iter()
                .map(|(c, t)| (bounded(c), bounded(t)))
                .collect(),
            otherwise.map(b),
        ),
        Term::Def(defs, t) => Term::Def(defs.into_iter().map(def).collect(), b(t)),
        Term::Call(name, args) => Term::Call(name, all(args)),
        Term::Path(t, path) => {
            use jaq_core::path::Part;
            let parts = path.0.into_iter().map(|(part, opt)| {
                let part = match part {
                    Part::Index(i) => Part::Index(bounded(i)),
                    Part::Range(from, upto) => Part::Range(from.map(bounded), upto.map(bounded)),
                };
                (part, opt)
            });
            Term::Path(b(t), jaq_core::path::Path(parts.collect()))
        }
    }
}

/// A definition with its body [`bounded`].
pub fn def(d: Def<&str>) -> Def<&str> {
    Def {
        body: bounded(d.body),
        ..d
    }
}

fn pattern(p: Pattern<&str>) -> Pattern<&str> {
    match p {
        Pattern::Var(_) => p,
        Pattern::Arr(ps) => Pattern::Arr(ps.into_iter().map(pattern).collect()),
        Pattern::Obj(entries) => Pattern::Obj(
            entries
                .into_iter()
                .map(|(k, p)| (bounded(k), pattern(p)))
                .collect(),
        ),
    }
}

/// `l += r` and `l *= r`, as jaq defines them (`r as $x | l |= . + $x`):
/// definitions that come before jaq's own, which use them.
pub fn defs() -> impl Iterator<Item = Def<&'static str>> {
    let code = "def _plus_update(l; r): r as $r | l |= _plus(.; $r);
                def _times_update(l; r): r as $r | l |= _times(.; $r);";
    jaq_core::load::parse(code, |p| p.defs())
        .expect("the bounded updates parse")
        .into_iter()
}

/// The bounded natives.
pub fn funs() -> impl Iterator<Item = Fun<Bounded>> {
    let f = |n: usize| -> Box<[Bind]> { (0..n).map(|_| Bind::Fun(())).collect() };
    let natives: [jaq_core::native::Filter<jaq_core::RunPtr<Bounded>>; 6] = [
        ("_plus", f(2), |cv| math(cv, plus)),
        ("_times", f(2), |cv| math(cv, times)),
        ("_divide", f(2), |cv| math(cv, divide)),
        ("_collect", f(1), |mut cv| {
            let budget: &Budget = cv.0.data();
            let (items, ctx) = cv.0.pop_fun();
            let mut array = Vec::new();
            for item in items.run((ctx, cv.1)) {
                budget.tick();
                match item {
                    Ok(_) if array.len() == MAX_ITEMS => {
                        return bome(Err(error(format!(
                            "an array of more than {MAX_ITEMS} items exceeds the limit"
                        ))));
                    }
                    Ok(item) => array.push(item),
                    Err(e) => return box_once(Err(e)),
                }
            }
            box_once(Ok(Val::Arr(Rc::new(array))))
        }),
        ("tostring", v(0), |cv| {
            bome(match cv.1 {
                Val::TStr(s) | Val::BStr(s) => {
                    text_within(s.len(), "tostring").map(|()| Val::TStr(s))
                }
                other => json(&other, "tostring"),
            })
        }),
        ("tojson", v(0), |cv| bome(json(&cv.1, "tojson"))),
    ];
    natives.into_iter().map(run::<Bounded>)
}

/// `l op r` for every output of `l` and of `r`, in jaq's order.
fn math<'a>(
    mut cv: Cv<'a, Bounded>,
    op: fn(Val, Val) -> Result<Val, jaq_core::Error<Val>>,
) -> ValXs<'a, Val> {
    let (r, rc) = cv.0.pop_fun();
    let (l, lc) = cv.0.pop_fun();
    let input = cv.1;
    flat_map_with(
        l.run((lc, input.clone())),
        (rc, input),
        move |l, (rc, input)| map_with(r.run((rc, input)), l, move |r, l| Ok(op(l?, r?)?)),
    )
}

fn plus(l: Val, r: Val) -> Result<Val, jaq_core::Error<Val>> {
    match (&l, &r) {
        (Val::TStr(a) | Val::BStr(a), Val::TStr(b) | Val::BStr(b)) => {
            text_within(a.len().saturating_add(b.len()), "+")?;
        }
        (Val::Arr(a), Val::Arr(b)) if a.len().saturating_add(b.len()) > MAX_ITEMS => {
            return Err(error(format!(
                "+: an array of {} items exceeds the limit of {MAX_ITEMS}",
                a.len() + b.len()
            )));
        }
        _ => {}
    }
    l + r
}

fn times(l: Val, r: Val) -> Result<Val, jaq_core::Error<Val>> {
    if let (Val::TStr(s) | Val::BStr(s), Val::Num(n)) | (Val::Num(n), Val::TStr(s) | Val::BStr(s)) =
        (&l, &r)
    {
        // jaq repeats a string by an integer (a larger one saturated), and
        // refuses any other number.
        let count = match n {
            Num::Int(i) => *i,
            Num::BigInt(_) if *n > Num::Int(0) => isize::MAX,
            _ => 0,
        };
        let count = count.max(0).unsigned_abs();
        text_within(s.len().saturating_mul(count), "*")?;
    }
    if let (Val::Num(a), Val::Num(b)) = (&l, &r) {
        let bits = int_bits(a) + int_bits(b);
        if bits > MAX_PRODUCT_BITS {
            return Err(error(format!(
                "*: a product of {bits} bits exceeds the limit of {MAX_PRODUCT_BITS}"
            )));
        }
    }
    l * r
}

/// The most bits a product of integers may have: a larger one takes
/// long in one step, where the deadline is not looked at.
pub const MAX_PRODUCT_BITS: u64 = 1 << 20;

fn int_bits(n: &Num) -> u64 {
    match n {
        Num::Int(i) => u64::from(isize::BITS - i.unsigned_abs().leading_zeros()),
        Num::BigInt(i) => i.bits(),
        _ => 0,
    }
}

/// `l / r`; a string split into more than [`MAX_ITEMS`] parts is refused.
fn divide(l: Val, r: Val) -> Result<Val, jaq_core::Error<Val>> {
    if let (Val::TStr(s), Val::TStr(sep)) | (Val::BStr(s), Val::BStr(sep)) = (&l, &r) {
        let parts = if sep.is_empty() {
            match &l {
                Val::TStr(_) => String::from_utf8_lossy(s).chars().count(),
                _ => s.len(),
            }
        } else {
            memchr::memmem::find_iter(s, &sep[..]).count() + 1
        };
        if parts > MAX_ITEMS {
            return Err(error(format!(
                "/: a split into {parts} parts exceeds the limit of {MAX_ITEMS} items"
            )));
        }
    }
    l / r
}

fn text_within(bytes: usize, name: &str) -> Result<(), jaq_core::Error<Val>> {
    if bytes > MAX_TEXT {
        Err(error(format!(
            "{name}: a string of {bytes} bytes exceeds the limit of {} MiB",
            MAX_TEXT >> 20
        )))
    } else {
        Ok(())
    }
}

/// `v` as JSON text, as jaq writes it, but never more than [`MAX_TEXT`].
fn json(v: &Val, name: &str) -> Result<Val, jaq_core::Error<Val>> {
    let mut out = Capped(Vec::new());
    match jaq_json::write::write(&mut out, &jaq_json::write::Pp::default(), 0, v) {
        Ok(()) => Ok(Val::utf8_str(out.0)),
        Err(_) => Err(error(format!(
            "{name}: the text exceeds the limit of {} MiB",
            MAX_TEXT >> 20
        ))),
    }
}

/// Bytes written up to [`MAX_TEXT`], then refused.
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + bytes.len() > MAX_TEXT {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
