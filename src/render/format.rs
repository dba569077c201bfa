//! Money, days and plural categories as a locale writes them, from the CLDR
//! data that ICU4X compiles in.
//!
//! The locale is a BCP 47 tag: the email's locale (`en`, `hy`, `am`) with
//! the customer's region when known (`en-US`, `en-GB`, `hy-AM`). `en`
//! without a region is read as `en-001`, English as written outside the
//! US (`6 December 2026`, `US$`); a US customer gets `December 6, 2026`.
//!
//! Formatting never fails: a currency code that is not one, or a locale
//! CLDR does not know, falls back to CLDR's root forms or to the amount and
//! the code as given.
//!
//! Only two things are not CLDR's, each because CLDR lacks it (see
//! [`MONEY_OVERRIDES`] and [`DATE_OVERRIDES`]).
//!
//! Formatters are built once per thread and locale tag as given (and
//! currency), and kept: building one costs more than formatting with it.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::str::FromStr;

use fixed_decimal::Decimal as FixedDecimal;
use icu_calendar::{Date, Gregorian};
use icu_datetime::FixedCalendarDateTimeFormatter;
use icu_datetime::fieldsets::YMD;
use icu_datetime::pattern::{DateTimePattern, FixedCalendarDateTimeNames, MonthNameLength};
use icu_decimal::DecimalFormatter;
use icu_experimental::dimension::currency::CurrencyType;
use icu_experimental::dimension::currency::formatter::CurrencyFormatter;
use icu_experimental::dimension::provider::currency::fractions::CurrencyFractionsV1;
use icu_locale_core::Locale;
use icu_locale_core::subtags::{Region, region};
use icu_plurals::{PluralCategory, PluralRules};
use icu_provider::prelude::*;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rust_decimal::{Decimal, RoundingStrategy};
use writeable::TryWriteable;

/// Where a language's own way with a currency differs from CLDR's:
/// `(language, currency, symbol)`, the symbol written after the amount and
/// a no-break space.
pub const MONEY_OVERRIDES: &[(&str, &str, &str)] = &[
    // CLDR's Armenian symbol for the dram is `֏` (U+058F), which many fonts
    // still lack (a box in the email); Armenian text writes `դր.`, the
    // abbreviation of դրամ, after the amount: `18 500 դր.`.
    ("hy", "AMD", "դր."),
    // CLDR's Amharic puts the birr before the amount (`ብር 1,500.00`);
    // Amharic text writes the word after it, as it is read: `1,500.00 ብር`.
    ("am", "ETB", "ብር"),
];

/// Where a language's long date is not CLDR's: `(language, pattern)`, a
/// CLDR pattern over CLDR's own month names.
pub const DATE_OVERRIDES: &[(&str, &str)] = &[
    // CLDR's Amharic long date is `ዲሴምበር 6 2026`; an Amharic date names
    // the day with ቀን ("day"), as letters and forms write it:
    // `ዲሴምበር 6 ቀን 2026`.
    ("am", "MMMM d 'ቀን' y"),
];

/// Distinct formatters kept per thread; past that, they are built each
/// time (a stream of made-up currency codes cannot fill memory).
const CACHE_MAX: usize = 256;

/// `tag` as the locale to format with: `en` alone is `en-001`; a tag that
/// does not parse is `en-001` too.
fn locale(tag: &str) -> Locale {
    let mut locale = Locale::from_str(&tag.replace('_', "-"))
        .unwrap_or_else(|_| Locale::from_str("en").expect("a valid tag"));
    if locale.id.language.as_str() == "en" && locale.id.region.is_none() {
        locale.id.region = Some(region!("001"));
    }
    locale
}

/// The region of a customer's locale tag (`US` of `en-US`), if it has one.
pub fn region_of(tag: &str) -> Option<String> {
    let locale = Locale::from_str(&tag.replace('_', "-")).ok()?;
    locale.id.region.map(|r: Region| r.as_str().to_owned())
}

/// The tag to format with for an email in `locale` to a customer in
/// `region`: `en` and `US` give `en-US`.
pub fn formatting_tag(locale: &str, region: Option<&str>) -> String {
    match region.and_then(|r| Region::try_from_str(r).ok()) {
        Some(region) => format!("{locale}-{}", region.as_str()),
        None => locale.to_owned(),
    }
}

fn cached<T>(
    cache: &'static std::thread::LocalKey<RefCell<HashMap<String, Rc<T>>>>,
    key: String,
    build: impl FnOnce() -> Option<T>,
) -> Option<Rc<T>> {
    if let Some(hit) = cache.with(|c| c.borrow().get(&key).cloned()) {
        return Some(hit);
    }
    let built = Rc::new(build()?);
    cache.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < CACHE_MAX {
            c.insert(key, built.clone());
        }
    });
    Some(built)
}

/// A currency in a locale: CLDR's formatter, and how many decimals.
struct Money {
    currency: CurrencyFormatter<DecimalFormatter>,
    number: DecimalFormatter,
    /// CLDR's decimals for the currency.
    digits: u32,
    /// Fewer decimals, when CLDR says cash uses fewer (the dram: 2 and 0).
    cash_digits: u32,
    /// The symbol of [`MONEY_OVERRIDES`], if any.
    own: Option<&'static str>,
}

thread_local! {
    static MONEY: RefCell<HashMap<String, Rc<Money>>> = RefCell::new(HashMap::new());
    static DATES: RefCell<HashMap<String, Rc<DateFormat>>> = RefCell::new(HashMap::new());
    static PLURALS: RefCell<HashMap<String, Rc<PluralRules>>> = RefCell::new(HashMap::new());
    static RECENT_MONEY: RefCell<VecDeque<RecentMoney>> =
        RefCell::new(VecDeque::with_capacity(RECENT_MAX));
}

/// CLDR's (decimals, cash decimals) for `currency`; 2 for a code CLDR does
/// not list, as CLDR's default.
fn fraction_digits(currency: CurrencyType) -> (u32, u32) {
    let fractions: Result<DataResponse<CurrencyFractionsV1>, _> =
        icu_experimental::provider::Baked.load(Default::default());
    match fractions {
        Ok(data) => {
            let info = data.payload.get().resolve(currency);
            let digits = u32::from(info.digits);
            let cash = info.cash_digits.map_or(digits, u32::from).min(digits);
            (digits, cash)
        }
        Err(_) => (2, 2),
    }
}

fn money_format(locale: &Locale, currency: &str) -> Option<Money> {
    let code = CurrencyType::try_from_str(currency).ok()?;
    let formatter =
        CurrencyFormatter::try_new_symbol(locale.into(), code, Default::default()).ok()?;
    let number = DecimalFormatter::try_new(locale.into(), Default::default()).ok()?;
    let (digits, cash_digits) = fraction_digits(code);
    let language = locale.id.language.as_str();
    let own = MONEY_OVERRIDES
        .iter()
        .find(|(l, c, _)| *l == language && *c == currency)
        .map(|(_, _, symbol)| *symbol);
    Some(Money {
        currency: formatter,
        number,
        digits,
        cash_digits,
        own,
    })
}

fn fixed(amount: Decimal) -> Option<FixedDecimal> {
    FixedDecimal::from_str(&amount.to_string()).ok()
}

/// `amount` in `currency` as the locale `tag` writes it: `€59.90` in
/// English, `18 500 դր.` in Armenian, `1,500.00 ብር` in Amharic.
///
/// Rounded half away from zero to CLDR's decimals for the currency; a
/// currency whose cash has fewer (the dram) shows those when the amount
/// has no more (`18 500 դր.`, but `18 500,50 դր.`).
pub fn format_money(amount: Decimal, currency: &str, tag: &str) -> String {
    // An email's amounts come twice, in its HTML and its text part: the
    // last ones formatted on this thread are kept, looked up in order.
    let recent = RECENT_MONEY.with(|r| {
        r.borrow()
            .iter()
            // Equal amounts format the same (59.9 and 59.90, -0 and 0: the
            // amount is rounded to the currency's decimals first).
            .find(|m| m.amount == amount && m.currency == currency && m.tag == tag)
            .map(|m| m.text.clone())
    });
    if let Some(text) = recent {
        return text;
    }
    let text = money_text(amount, currency, tag);
    RECENT_MONEY.with(|r| {
        let mut r = r.borrow_mut();
        if r.len() == RECENT_MAX {
            r.pop_front();
        }
        r.push_back(RecentMoney {
            amount,
            currency: currency.to_owned(),
            tag: tag.to_owned(),
            text: text.clone(),
        });
    });
    text
}

/// Amounts kept formatted per thread: more than an email's distinct ones.
const RECENT_MAX: usize = 32;

struct RecentMoney {
    amount: Decimal,
    currency: String,
    tag: String,
    text: String,
}

/// [`format_money`] without the recent amounts: formats every time.
fn money_text(amount: Decimal, currency: &str, tag: &str) -> String {
    // Keyed by the tag as given, parsed only to build: parsing and
    // writing out the locale cost more than the formatting. The tag's
    // length first keeps two pairs from making one key.
    let key = format!("{}:{tag}{currency}", tag.len());
    let Some(money) = cached(&MONEY, key, || money_format(&locale(tag), currency)) else {
        return fallback_money(amount, currency, &locale(tag));
    };
    let rounded =
        amount.round_dp_with_strategy(money.digits, RoundingStrategy::MidpointAwayFromZero);
    let shown = if rounded == rounded.round_dp(money.cash_digits) {
        money.cash_digits
    } else {
        money.digits
    };
    let Some(mut value) = fixed(rounded) else {
        return fallback_money(amount, currency, &locale(tag));
    };
    value.pad_end(-(money.digits as i16));
    let mut number = value.clone();
    number.round(-(shown as i16));
    number.absolute.trim_end();
    number.pad_end(-(shown as i16));
    if let Some(symbol) = money.own {
        let number = money.number.format(&number).to_string();
        return format!("{number}\u{a0}{symbol}");
    }
    let mut text = money.currency.format_fixed_decimal(&value).to_string();
    if shown < money.digits {
        // CLDR's formatter always shows its decimals: put the number with
        // fewer in place of the number with CLDR's (`18,500.00` ->
        // `18,500`), found as the plain formatter writes it.
        let mut long = value.clone();
        long.sign = fixed_decimal::Sign::None;
        let mut short = number.clone();
        short.sign = fixed_decimal::Sign::None;
        let long = money.number.format(&long).to_string();
        let short = money.number.format(&short).to_string();
        text = text.replacen(&long, &short, 1);
    }
    text
}

/// The amount as the locale writes a number, and the code as given: for a
/// code that is not an ISO 4217 one.
fn fallback_money(amount: Decimal, currency: &str, locale: &Locale) -> String {
    let rounded = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    let number = fixed(rounded)
        .and_then(|mut value| {
            value.pad_end(-2);
            let formatter = DecimalFormatter::try_new(locale.into(), Default::default()).ok()?;
            Some(formatter.format(&value).to_string())
        })
        .unwrap_or_else(|| rounded.to_string());
    let code: String = currency.chars().filter(|c| !c.is_control()).collect();
    format!("{code}\u{a0}{number}")
}

/// Kept one per thread and locale, so the sizes of the two do not matter.
#[allow(clippy::large_enum_variant)]
enum DateFormat {
    Cldr(FixedCalendarDateTimeFormatter<Gregorian, YMD>),
    Own(FixedCalendarDateTimeNames<Gregorian, YMD>, DateTimePattern),
}

fn date_format(locale: &Locale) -> Option<DateFormat> {
    let language = locale.id.language.as_str();
    if let Some((_, pattern)) = DATE_OVERRIDES.iter().find(|(l, _)| *l == language) {
        let own = (|| {
            let mut names =
                FixedCalendarDateTimeNames::<Gregorian, YMD>::try_new(locale.into()).ok()?;
            names.include_month_names(MonthNameLength::Wide).ok()?;
            names.include_decimal_formatter().ok()?;
            let pattern = DateTimePattern::try_from_pattern_str(pattern).ok()?;
            Some(DateFormat::Own(names, pattern))
        })();
        if own.is_some() {
            return own;
        }
    }
    FixedCalendarDateTimeFormatter::try_new(locale.into(), YMD::long())
        .ok()
        .map(DateFormat::Cldr)
}

/// The moment `ts` as the day it is in `tz`, as the locale `tag` writes it.
pub fn format_date(ts: Timestamp, tz: &TimeZone, tag: &str) -> String {
    format_day(ts.to_zoned(tz.clone()).date(), tag)
}

/// A day as the locale `tag` writes it in full: `December 6, 2026` in
/// `en-US`, `6 December 2026` in `en` and `en-GB`.
pub fn format_day(day: jiff::civil::Date, tag: &str) -> String {
    let iso = || format!("{day}");
    let Ok(date) =
        Date::try_new_gregorian(i32::from(day.year()), day.month() as u8, day.day() as u8)
    else {
        return iso();
    };
    let Some(format) = cached(&DATES, tag.to_owned(), || date_format(&locale(tag))) else {
        return iso();
    };
    match &*format {
        DateFormat::Cldr(formatter) => formatter.format(&date).to_string(),
        DateFormat::Own(names, pattern) => names
            .with_pattern_unchecked(pattern)
            .format(&date)
            .try_write_to_string()
            .map_or_else(|_| iso(), |s| s.into_owned()),
    }
}

/// Whether `n` takes the "one" form in the locale `tag` (CLDR cardinal
/// rules: in Armenian and Amharic 0 and 1 both do).
pub fn is_one(n: u64, tag: &str) -> bool {
    match cached(&PLURALS, tag.to_owned(), || {
        PluralRules::try_new_cardinal((&locale(tag)).into()).ok()
    }) {
        Some(rules) => rules.category_for(n) == PluralCategory::One,
        None => n == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn amounts_formatted_again_come_out_the_same() {
        let cases = [
            ("0", "EUR", "en"),
            ("-0", "EUR", "en"),
            ("-0.00", "EUR", "en"),
            ("59.9", "EUR", "en-US"),
            ("59.90", "EUR", "en-US"),
            ("59.9", "EUR", "en-DE"),
            ("59.9", "USD", "en-US"),
            ("18500", "AMD", "hy"),
        ];
        let first: Vec<String> = cases
            .iter()
            .map(|(a, c, t)| money_text(d(a), c, t))
            .collect();
        for _ in 0..2 {
            for ((a, c, t), want) in cases.iter().zip(&first) {
                assert_eq!(&format_money(d(a), c, t), want, "{a} {c} {t}");
            }
        }
        // More distinct amounts than are kept: the oldest go, none wrong.
        for n in 0..(RECENT_MAX as i64 * 3) {
            let amount = Decimal::new(n * 7, 1);
            assert_eq!(
                format_money(amount, "EUR", "en"),
                money_text(amount, "EUR", "en")
            );
        }
        assert_eq!(RECENT_MONEY.with(|r| r.borrow().len()), RECENT_MAX);
    }

    #[test]
    fn english_money_by_region() {
        assert_eq!(format_money(d("1500"), "USD", "en-US"), "$1,500.00");
        assert_eq!(format_money(d("59.9"), "EUR", "en-US"), "€59.90");
        assert_eq!(format_money(d("12.5"), "GBP", "en-GB"), "£12.50");
        assert_eq!(format_money(d("1500"), "USD", "en-GB"), "US$1,500.00");
        // `en` alone is en-001: a dollar is said to be the US one.
        assert_eq!(format_money(d("59.90"), "EUR", "en"), "€59.90");
        assert_eq!(format_money(d("1234.5"), "USD", "en"), "US$1,234.50");
        // A region whose English writes numbers its own way.
        assert_eq!(format_money(d("59.9"), "EUR", "en-DE"), "59,90\u{a0}€");
        // CLDR's digits: none for the yen, three for the Kuwaiti dinar.
        assert_eq!(format_money(d("1500.5"), "JPY", "en-US"), "¥1,501");
        assert_eq!(format_money(d("1.5"), "KWD", "en-US"), "KWD\u{a0}1.500");
        assert_eq!(format_money(d("-5"), "EUR", "en-US"), "-€5.00");
    }

    #[test]
    fn the_dram_in_armenian_and_elsewhere() {
        // NBSP groups and separates the symbol; CLDR groups Armenian
        // numbers from five digits on.
        assert_eq!(
            format_money(d("18500"), "AMD", "hy"),
            "18\u{a0}500\u{a0}դր."
        );
        assert_eq!(format_money(d("1500"), "AMD", "hy-AM"), "1500\u{a0}դր.");
        // Whole drams without decimals; a fraction is never hidden.
        assert_eq!(
            format_money(d("18500.5"), "AMD", "hy"),
            "18\u{a0}500,50\u{a0}դր."
        );
        assert_eq!(format_money(d("18500"), "AMD", "en"), "AMD\u{a0}18,500");
        assert_eq!(format_money(d("18500"), "AMD", "am"), "AMD\u{a0}18,500");
        assert_eq!(format_money(d("59.9"), "EUR", "hy"), "59,90\u{a0}€");
        assert_eq!(
            format_money(d("1234567.891"), "USD", "hy"),
            "1\u{a0}234\u{a0}567,89\u{a0}$"
        );
    }

    #[test]
    fn the_birr_in_amharic_and_elsewhere() {
        assert_eq!(format_money(d("1500"), "ETB", "am"), "1,500.00\u{a0}ብር");
        assert_eq!(format_money(d("59.9"), "ETB", "am-ET"), "59.90\u{a0}ብር");
        assert_eq!(format_money(d("59.9"), "EUR", "am"), "€59.90");
        assert_eq!(format_money(d("1500"), "ETB", "en"), "ETB\u{a0}1,500.00");
    }

    #[test]
    fn unknown_currencies_and_locales_still_write_the_amount() {
        // A code CLDR does not know: the code, as CLDR writes one.
        assert_eq!(format_money(d("1500.5"), "QZZ", "en"), "QZZ\u{a0}1,500.50");
        // Not a code at all (not from the event decoder, which refuses it).
        assert_eq!(
            format_money(d("1500.5"), "euro", "en"),
            "euro\u{a0}1,500.50"
        );
        assert_eq!(format_money(d("2.5"), "EUR", "not a tag"), "€2.50");
        assert_eq!(format_money(d("2.5"), "EUR", "zz"), "€\u{a0}2.50");
    }

    #[test]
    fn long_dates_by_locale_and_region() {
        let day: jiff::civil::Date = "2026-12-06".parse().unwrap();
        assert_eq!(format_day(day, "en-US"), "December 6, 2026");
        assert_eq!(format_day(day, "en-GB"), "6 December 2026");
        assert_eq!(format_day(day, "en"), "6 December 2026");
        // CLDR 49's Armenian long date, with its U+2024 after թ.
        assert_eq!(format_day(day, "hy"), "2026 թ\u{2024} դեկտեմբերի 06");
        assert_eq!(format_day(day, "am"), "ዲሴምበር 6 ቀን 2026");
        let ts: Timestamp = "2026-11-24T22:30:00Z".parse().unwrap();
        let yerevan = TimeZone::get("Asia/Yerevan").unwrap();
        assert_eq!(format_date(ts, &TimeZone::UTC, "en"), "24 November 2026");
        assert_eq!(
            format_date(ts, &yerevan, "hy"),
            "2026 թ\u{2024} նոյեմբերի 25"
        );
    }

    #[test]
    fn plural_rules_differ_by_locale() {
        assert!(is_one(1, "en"));
        assert!(is_one(1, "en-US"));
        assert!(!is_one(0, "en"));
        assert!(is_one(0, "am"));
        assert!(is_one(1, "hy"));
        assert!(!is_one(2, "hy"));
    }

    #[test]
    fn the_region_of_a_tag() {
        assert_eq!(region_of("en-US").as_deref(), Some("US"));
        assert_eq!(region_of("hy_AM").as_deref(), Some("AM"));
        assert_eq!(region_of("es-419").as_deref(), Some("419"));
        assert_eq!(region_of("hy"), None);
        assert_eq!(region_of("x".repeat(35).as_str()), None);
        assert_eq!(formatting_tag("en", Some("US")), "en-US");
        assert_eq!(formatting_tag("en", Some("US\"><b>")), "en");
        assert_eq!(formatting_tag("hy", None), "hy");
    }

    /// CLDR's decimals of the currencies the property test uses, with the
    /// dram's whole-dram exception.
    fn shown_digits(currency: &str, rounded: Decimal) -> u32 {
        match currency {
            "JPY" => 0,
            "KWD" => 3,
            "AMD" if rounded.fract().is_zero() => 0,
            _ => 2,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any amount the event decoder accepts (0 to 10^12, up to eight
        /// decimals), any currency, any locale: formatting does not panic
        /// and writes the amount's digits, rounded to the currency's.
        #[test]
        fn money_keeps_the_digits(
            units in 0i64..=1_000_000_000_000,
            fraction in 0i64..100_000_000,
            scale in 0u32..=8,
            currency in prop_oneof![
                Just("EUR".to_owned()), Just("USD".to_owned()), Just("GBP".to_owned()),
                Just("AMD".to_owned()), Just("ETB".to_owned()), Just("JPY".to_owned()),
                Just("KWD".to_owned()), "Q[M-Z][A-Z]",
            ],
            tag in prop_oneof![
                Just("en"), Just("en-US"), Just("en-GB"), Just("en-DE"), Just("hy"),
                Just("hy-AM"), Just("am"), Just("am-ET"), Just("de"), Just("zz"), Just("--"),
            ],
        ) {
            let fraction = Decimal::new(fraction, 8).round_dp(scale);
            let amount = (Decimal::from(units) + fraction).min(Decimal::from(1_000_000_000_000i64));
            let text = format_money(amount, &currency, tag);
            let digits = match currency.as_str() { "JPY" => 0, "KWD" => 3, _ => 2 };
            let rounded = amount.round_dp_with_strategy(digits, RoundingStrategy::MidpointAwayFromZero);
            let shown = shown_digits(&currency, rounded) as usize;
            let expected: String = format!("{rounded:.shown$}").chars().filter(char::is_ascii_digit).collect();
            let written: String = text.chars().filter(char::is_ascii_digit).collect();
            prop_assert_eq!(written, expected, "{}", text);
        }
    }
}
