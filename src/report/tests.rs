//! The report's figures on small histories worked out by hand.

use super::*;

use super::fixtures::{period, t};

fn order(id: &str, at: &str, total: &str) -> Order {
    Order {
        id: id.into(),
        placed_at: t(at),
        total: total.parse().unwrap(),
        currency: "EUR".into(),
        cancelled: false,
        returns: Vec::new(),
        refunds: Vec::new(),
    }
}

fn customer(id: String, orders: Vec<Order>) -> Customer {
    Customer {
        id,
        orders,
        segment: Segment::Regular,
    }
}

fn settings() -> Scope {
    period("2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z")
}

/// S = 500 active at the start (K = 400 who stay, L = 100 whose last order
/// falls out of the window), N = 50 new, R = 0, E = 400 + 50 = 450.
fn worked_example() -> Vec<Customer> {
    let mut all = Vec::new();
    for i in 0..400 {
        let mut orders = vec![order("a", "2025-12-10T10:00:00Z", "40.00")];
        if i < 100 {
            orders.push(order("b", "2026-03-05T10:00:00Z", "40.00"));
        }
        if i < 20 {
            orders.push(order("c", "2026-03-20T10:00:00Z", "40.00"));
        }
        all.push(customer(format!("stay-{i}"), orders));
    }
    for i in 0..100 {
        all.push(customer(
            format!("lost-{i}"),
            vec![order("a", "2025-09-15T10:00:00Z", "40.00")],
        ));
    }
    for i in 0..50 {
        all.push(customer(
            format!("new-{i}"),
            vec![order("a", "2026-02-01T10:00:00Z", "40.00")],
        ));
    }
    all
}

#[test]
fn the_retention_rate_of_the_worked_example_is_80_percent() {
    let r = compute(&worked_example(), &[], &settings()).customers;
    assert_eq!((r.active_at_start, r.kept, r.lost), (500, 400, 100));
    assert_eq!((r.new_customers, r.won_back, r.active_at_end), (50, 0, 450));
    // K / S = 400 / 500 = (E - N - R) / S = (450 - 50 - 0) / 500.
    assert_eq!(r.retention_rate, Some(80.0));
    assert_eq!(r.churn_rate, Some(20.0));
    // 150 customers ordered in the period (50 new, 100 returning), 170
    // orders; 20 of them ordered twice.
    assert_eq!((r.ordering_customers, r.orders), (150, 170));
    assert_eq!(r.repeat_purchase_rate, Some(13.33));
    assert_eq!(r.purchase_frequency, Some(1.13));
    let eur = &r.money["EUR"];
    assert_eq!(eur.revenue, "6800.00".parse::<Decimal>().unwrap());
    assert_eq!(eur.average_order_value, "40.00".parse::<Decimal>().unwrap());
    assert_eq!(eur.purchase_frequency, Some(1.13));
    // No refund: net = gross.
    assert_eq!(eur.refunds, Decimal::ZERO);
    assert_eq!(eur.net_revenue, "6800.00".parse::<Decimal>().unwrap());
    // 40 x 170/150 x (1 / 0.20) = 226.666..., from the unrounded 170/150
    // (1.13 would give 226.00).
    assert_eq!(eur.lifetime_value, Some("226.67".parse().unwrap()));
}

#[test]
fn a_cancelled_order_does_not_keep_a_customer_active() {
    let mut c = customer("c".into(), vec![order("a", "2025-12-10T10:00:00Z", "10")]);
    c.orders[0].cancelled = true;
    let r = compute(&[c], &[], &settings()).customers;
    assert_eq!((r.active_at_start, r.active_at_end), (0, 0));
    assert_eq!(r.retention_rate, None, "no S, no rate");
}

fn sent(customer: &str, template: &str, variant: Option<&str>, at: &str) -> SentEmail {
    SentEmail {
        customer_id: customer.into(),
        template: template.into(),
        marketing: template != "order_confirmation",
        variant: variant.map(str::to_owned),
        at: t(at),
        held_out: false,
    }
}

#[test]
fn an_order_goes_to_the_last_email_within_the_window() {
    let customers = vec![
        customer(
            "c-1".into(),
            vec![
                // Two days after the win-back (welcome was earlier): win-back.
                order("o-1", "2026-02-04T10:00:00Z", "30.00"),
                // Six days after the last email: nobody's.
                order("o-2", "2026-03-10T10:00:00Z", "15.00"),
            ],
        ),
        customer(
            "c-2".into(),
            vec![order("o-3", "2026-02-03T10:00:00Z", "20.00")],
        ),
    ];
    let emails = vec![
        sent("c-1", "welcome", None, "2026-02-01T10:00:00Z"),
        sent("c-1", "win_back", None, "2026-02-02T10:00:00Z"),
        sent("c-1", "win_back", None, "2026-03-04T10:00:00Z"),
        sent("c-2", "win_back", None, "2026-02-01T10:00:00Z"),
        // Before the period: neither counted nor credited.
        sent("c-2", "welcome", None, "2025-12-30T10:00:00Z"),
        // Transactional: counted, never credited (though it is the last).
        sent("c-1", "order_confirmation", None, "2026-02-03T10:00:00Z"),
    ];
    let report = compute(&customers, &emails, &settings());
    let find = |template: &str| {
        report
            .emails
            .iter()
            .find(|e| e.template == template)
            .unwrap()
    };
    let welcome = find("welcome");
    assert_eq!(
        (welcome.sent, welcome.converted, welcome.attributed_orders),
        (1, 0, 0)
    );
    let win_back = find("win_back");
    assert_eq!(
        (
            win_back.sent,
            win_back.converted,
            win_back.attributed_orders
        ),
        (3, 2, 2)
    );
    assert_eq!(win_back.revenue["EUR"], "50.00".parse::<Decimal>().unwrap());
    assert_eq!(win_back.conversion_rate, Some(66.67));
    let confirmation = find("order_confirmation");
    assert_eq!((confirmation.sent, confirmation.converted), (1, 0));
    assert_eq!(confirmation.conversion_rate, None, "not a marketing email");
}

#[test]
fn conversion_rates_carry_a_wilson_interval() {
    assert_eq!(wilson(5, 10), Some((23.66, 76.34)));
    assert_eq!(wilson(0, 20), Some((0.0, 16.11)));
    assert_eq!(wilson(0, 0), None);
}

#[test]
fn an_ab_test_names_the_leader_and_how_sure_it_is() {
    let mut customers = Vec::new();
    let mut emails = Vec::new();
    for (variant, converting) in [("a", 10), ("b", 20)] {
        for i in 0..100 {
            let id = format!("{variant}-{i}");
            emails.push(sent(
                &id,
                "review_request",
                Some(variant),
                "2026-02-01T10:00:00Z",
            ));
            let orders = if i < converting {
                vec![order("o", "2026-02-03T10:00:00Z", "10.00")]
            } else {
                Vec::new()
            };
            customers.push(customer(id, orders));
        }
    }
    let report = compute(&customers, &emails, &settings());
    assert_eq!(report.ab_tests.len(), 1);
    let test = &report.ab_tests[0];
    assert_eq!((test.leader.as_str(), test.runner_up.as_str()), ("b", "a"));
    // z = 0.10 / sqrt(0.15 x 0.85 x 2/100) = 1.980: 97.62 %.
    assert_eq!(test.confidence, 97.62);
}

#[test]
fn returns_are_counted_with_their_reasons() {
    let mut o1 = order("o-1", "2026-02-01T10:00:00Z", "10");
    o1.returns = vec![(t("2026-02-05T10:00:00Z"), Some("damaged".into()))];
    let mut o2 = order("o-2", "2026-02-02T10:00:00Z", "10");
    o2.returns = vec![(t("2026-02-06T10:00:00Z"), Some("damaged".into()))];
    let mut o3 = order("o-3", "2026-02-03T10:00:00Z", "10");
    o3.returns = vec![(t("2026-02-07T10:00:00Z"), None)];
    let o4 = order("o-4", "2026-02-04T10:00:00Z", "10");
    let report = compute(
        &[customer("c".into(), vec![o1, o2, o3, o4])],
        &[],
        &settings(),
    );
    let r = report.returns;
    assert_eq!(
        (r.orders, r.returned_orders, r.return_rate),
        (4, 3, Some(75.0))
    );
    assert_eq!(
        r.reasons,
        [
            ("damaged".to_owned(), 2),
            ("(no reason given)".to_owned(), 1)
        ]
    );
}

#[test]
fn money_stays_in_its_currency_and_segments_are_reported_apart() {
    let mut amd = order("o-2", "2026-02-01T10:00:00Z", "23500");
    amd.currency = "AMD".into();
    let mut vip = customer("v".into(), vec![amd]);
    vip.segment = Segment::Vip;
    let regular = customer(
        "r".into(),
        vec![order("o-1", "2026-02-01T10:00:00Z", "20.00")],
    );
    let report = compute(&[vip, regular], &[], &settings());
    assert_eq!(report.customers.money["AMD"].revenue, Decimal::from(23500));
    assert_eq!(report.customers.money["EUR"].revenue, Decimal::from(20));
    assert_eq!(report.segments["vip"].orders, 1);
    assert!(!report.segments["vip"].money.contains_key("EUR"));
    assert_eq!(report.segments["regular"].new_customers, 1);
}

#[test]
fn amounts_stored_before_the_decoder_bounded_them_do_not_stop_the_report() {
    // Two customers of 5e28 each: their sum overflowed and `report` exited
    // 101. Revenue saturates now, and a figure whose product overflows is
    // left out.
    let big = "50000000000000000000000000000";
    let customers = vec![
        customer("a".into(), vec![order("a", "2026-02-01T10:00:00Z", big)]),
        customer("b".into(), vec![order("b", "2026-02-02T10:00:00Z", big)]),
    ];
    let r = compute(&customers, &[], &settings()).customers;
    let eur = &r.money["EUR"];
    assert_eq!(eur.orders, 2);
    assert_eq!(eur.revenue, Decimal::MAX);
}

fn amd(id: &str, at: &str, total: &str) -> Order {
    Order {
        currency: "AMD".into(),
        ..order(id, at, total)
    }
}

fn refund(at: &str, amount: &str) -> Refund {
    Refund {
        at: t(at),
        amount: amount.parse().unwrap(),
        currency: "EUR".into(),
    }
}

/// A shop with customers won back, orders and refunds after the period,
/// and two currencies. The period is 2026-01-01 to 2026-04-01 (90 days),
/// active: an order in the last 180 days.
/// - stay-0..9: an order on 2025-12-01 (31 days before the start, 121
///   before the end): active at both ends, K = 10. stay-0..3 order again on
///   2026-02-10, 50 EUR. stay-0 orders on 2026-04-10 too (after the
///   period: counted nowhere), and stay-1 was refunded 10 EUR on
///   2026-02-20 (in the period) and 5 EUR on 2026-04-05 (after it).
/// - lost-0..4: an order on 2025-08-01 (153 days before the start, 243
///   before the end): L = 5, so S = 15.
/// - back-0..2: an order on 2025-03-01 (306 days before the start: not
///   active), and one on 2026-03-01, 30 EUR: won back, R = 3.
/// - new-0, new-1: first orders in AMD, 8,000 each: new-0 on 2026-02-15
///   and 2026-03-15, new-1 on 2026-02-15. N = 2.
/// - later: a first order on 2026-05-01, after the period: nowhere.
fn shop_with_won_back_customers() -> Vec<Customer> {
    let mut all = Vec::new();
    for i in 0..10 {
        let mut orders = vec![order("a", "2025-12-01T10:00:00Z", "25.00")];
        if i < 4 {
            orders.push(order("b", "2026-02-10T10:00:00Z", "50.00"));
        }
        if i == 0 {
            orders.push(order("c", "2026-04-10T10:00:00Z", "70.00"));
        }
        if i == 1 {
            orders[1].refunds = vec![
                refund("2026-02-20T10:00:00Z", "10.00"),
                refund("2026-04-05T10:00:00Z", "5.00"),
            ];
        }
        all.push(customer(format!("stay-{i}"), orders));
    }
    for i in 0..5 {
        all.push(customer(
            format!("lost-{i}"),
            vec![order("a", "2025-08-01T10:00:00Z", "25.00")],
        ));
    }
    for i in 0..3 {
        all.push(customer(
            format!("back-{i}"),
            vec![
                order("a", "2025-03-01T10:00:00Z", "25.00"),
                order("b", "2026-03-01T10:00:00Z", "30.00"),
            ],
        ));
    }
    all.push(customer(
        "new-0".into(),
        vec![
            amd("a", "2026-02-15T10:00:00Z", "8000"),
            amd("b", "2026-03-15T10:00:00Z", "8000"),
        ],
    ));
    all.push(customer(
        "new-1".into(),
        vec![amd("a", "2026-02-15T10:00:00Z", "8000")],
    ));
    all.push(customer(
        "later".into(),
        vec![order("a", "2026-05-01T10:00:00Z", "99.00")],
    ));
    all
}

#[test]
fn customers_won_back_are_not_counted_as_retained() {
    let r = compute(&shop_with_won_back_customers(), &[], &settings()).customers;
    assert_eq!((r.active_at_start, r.kept, r.lost), (15, 10, 5));
    assert_eq!((r.new_customers, r.won_back), (2, 3));
    // E = K + N + R = 10 + 2 + 3.
    assert_eq!(r.active_at_end, 15);
    // CRR = K / S = 10 / 15 = 66.67 %, and (E - N - R) / S = (15 - 2 - 3)
    // / 15 the same. The old (E - N) / S gave 13 / 15 = 86.67 %, crediting
    // the three won back as kept.
    assert_eq!(r.retention_rate, Some(66.67));
    assert_eq!(r.churn_rate, Some(33.33));
    // In the period: stay-0..3 (1 each), back-0..2 (1 each), new-0 (2),
    // new-1 (1): 9 customers, 10 orders, 1 repeat.
    assert_eq!((r.ordering_customers, r.orders), (9, 10));
    assert_eq!(r.repeat_purchase_rate, Some(11.11));
    assert_eq!(r.purchase_frequency, Some(1.11));
}

#[test]
fn money_figures_are_per_currency_and_lifetime_value_uses_each_currencys_frequency() {
    let r = compute(&shop_with_won_back_customers(), &[], &settings()).customers;
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    // EUR: 4 x 50 + 3 x 30 = 290 gross in 7 orders by 7 customers; the
    // refund of 2026-02-20 (10) is in the period, that of 2026-04-05 not.
    let eur = &r.money["EUR"];
    assert_eq!((eur.orders, eur.customers), (7, 7));
    assert_eq!(eur.revenue, d("290.00"));
    assert_eq!(eur.refunds, d("10.00"));
    assert_eq!(eur.net_revenue, d("280.00"));
    // AOV 290 / 7 = 41.428571...
    assert_eq!(eur.average_order_value, d("41.43"));
    assert_eq!(eur.purchase_frequency, Some(1.0));
    // Lifespan 1 / churn = S / L = 15 / 5 = 3 periods. CLV = 290/7 x 7/7
    // x 3 = 124.2857...: 124.29 (the rounded AOV would give 124.29 too,
    // but 41.43 x 10/9 x 3 = 138.10 with the shop-wide frequency).
    assert_eq!(eur.lifetime_value, Some(d("124.29")));
    // AMD: 3 orders of 8,000 by 2 customers, frequency 1.5, no refund.
    let amd = &r.money["AMD"];
    assert_eq!((amd.orders, amd.customers), (3, 2));
    assert_eq!(amd.revenue, d("24000"));
    assert_eq!(amd.refunds, Decimal::ZERO);
    assert_eq!(amd.average_order_value, d("8000"));
    assert_eq!(amd.purchase_frequency, Some(1.5));
    // 8,000 x 3/2 x 3 = 36,000 (the shop-wide 10/9 would give 26,666.67).
    assert_eq!(amd.lifetime_value, Some(d("36000")));
}

#[test]
fn segments_use_the_same_definitions_and_stay_between_0_and_100_percent() {
    // A segment of two kept, one lost and three won back: the old formula
    // gave (E - N) / S = (2 + 3) / 3 = 166.67 % and a churn of -66.67 %.
    let mut customers = shop_with_won_back_customers();
    for c in &mut customers {
        if ["stay-0", "stay-1", "lost-0", "back-0", "back-1", "back-2"].contains(&c.id.as_str()) {
            c.segment = Segment::Vip;
        }
    }
    let report = compute(&customers, &[], &settings());
    let vip = &report.segments["vip"];
    assert_eq!(
        (
            vip.active_at_start,
            vip.kept,
            vip.lost,
            vip.won_back,
            vip.active_at_end
        ),
        (3, 2, 1, 3, 5)
    );
    // 2 / 3 and 1 / 3; lifespan 3 / 1 = 3 periods: stay-0, stay-1 (50 each)
    // and back-0..2 (30 each) ordered: 190 / 5 x 1 x 3 = 114.
    assert_eq!(
        (vip.retention_rate, vip.churn_rate),
        (Some(66.67), Some(33.33))
    );
    assert_eq!(
        vip.money["EUR"].lifetime_value,
        Some("114".parse().unwrap())
    );
    let regular = &report.segments["regular"];
    // stay-2..9 kept, lost-1..4 lost, new-0/1 new: 8 / 12.
    assert_eq!(
        (
            regular.active_at_start,
            regular.kept,
            regular.new_customers,
            regular.won_back
        ),
        (12, 8, 2, 0)
    );
    assert_eq!(regular.retention_rate, Some(66.67));
}

#[test]
fn the_last_emails_of_the_period_are_judged_on_their_whole_window() {
    let customers = vec![
        customer(
            "c-1".into(),
            vec![order("o-1", "2026-04-02T10:00:00Z", "30.00")],
        ),
        customer(
            "c-2".into(),
            vec![order("o-2", "2026-04-03T10:00:00Z", "20.00")],
        ),
        customer(
            "c-3".into(),
            vec![order("o-3", "2026-04-08T10:00:00Z", "20.00")],
        ),
    ];
    let emails = vec![
        // Two days before its order, sent on the period's last day: its
        // order falls after --to but within 5 days: converted.
        sent("c-1", "win_back", None, "2026-03-31T10:00:00Z"),
        // In the period, but a later email (after it) is the last touch.
        sent("c-2", "win_back", None, "2026-03-31T10:00:00Z"),
        sent("c-2", "welcome", None, "2026-04-01T05:00:00Z"),
        // Eight days before the order: outside the window.
        sent("c-3", "win_back", None, "2026-03-31T10:00:00Z"),
    ];
    let report = compute(&customers, &emails, &settings());
    assert_eq!(report.attribution_until, t("2026-04-06T00:00:00Z"));
    let win_back = report
        .emails
        .iter()
        .find(|e| e.template == "win_back")
        .unwrap();
    assert_eq!(
        (
            win_back.sent,
            win_back.converted,
            win_back.attributed_orders
        ),
        (3, 1, 1)
    );
    assert_eq!(win_back.revenue["EUR"], "30.00".parse::<Decimal>().unwrap());
    // Sent after the period: not in it, and its order credits nobody.
    assert!(report.emails.iter().all(|e| e.template != "welcome"));
    // The period's own figures do not take these orders in.
    assert_eq!(report.customers.orders, 0);
}

#[test]
fn the_page_writes_money_with_each_currencys_usual_decimals() {
    let page = render::html(
        &compute(&shop_with_won_back_customers(), &[], &settings()),
        "Shop",
    );
    // 24,000 drams without decimals, euros with two.
    assert!(page.contains("<td>AMD\u{a0}24,000</td>"), "{page}");
    assert!(page.contains("<td>€290.00</td>"), "{page}");
    assert!(page.contains("<td>€10.00</td>"), "refunds: {page}");
    assert!(page.contains("<td>€124.29</td>"), "lifetime value: {page}");
    assert!(page.contains("<th>Won back, active at the end (R)</th><td>3</td>"));
}

#[test]
fn csv_quotes_a_field_with_a_comma_or_a_quote() {
    let mut o = order("o-1", "2026-02-01T10:00:00Z", "10");
    o.returns = vec![
        (
            t("2026-02-05T10:00:00Z"),
            Some("too big, and \"scratchy\"".into()),
        ),
        (t("2026-02-06T10:00:00Z"), Some("damaged".into())),
        (t("2026-02-07T10:00:00Z"), Some("damaged".into())),
    ];
    let csv = render::csv(&compute(&[customer("c".into(), vec![o])], &[], &settings()));
    let reasons: Vec<&str> = csv
        .lines()
        .filter(|l| l.starts_with("return_reason,"))
        .collect();
    // Most frequent first, as everywhere.
    assert_eq!(
        reasons,
        [
            "return_reason,damaged,requests,2",
            r#"return_reason,"too big, and ""scratchy""",requests,1"#
        ]
    );
    assert_eq!(csv.lines().next(), Some("section,group,figure,value"));
}

#[test]
fn the_return_reasons_chart_puts_the_most_frequent_on_top() {
    let mut o = order("o-1", "2026-02-01T10:00:00Z", "10");
    o.returns = vec![
        (t("2026-02-05T10:00:00Z"), Some("zzz-rare".into())),
        (t("2026-02-06T10:00:00Z"), Some("aaa-often".into())),
        (t("2026-02-07T10:00:00Z"), Some("aaa-often".into())),
    ];
    let page = render::html(
        &compute(&[customer("c".into(), vec![o])], &[], &settings()),
        "Shop",
    );
    let chart = &page[page.find("id=\"returns-chart\"").unwrap()..];
    // charts-rs draws its first row at the bottom, and the SVG lists the
    // labels from the top: the most frequent must come first.
    let (often, rare) = (
        chart.find("aaa-often").unwrap(),
        chart.find("zzz-rare").unwrap(),
    );
    assert!(often < rare, "{chart}");
}

/// Win-backs of 2026-02-01 10:00: s-1..s-4 got it, h-1 and h-2 were held
/// out. s-1 orders 2 days later (ordered), s-2 9 days later (outside the
/// 5-day window), s-3's order 1 day later is cancelled, s-4 does not
/// order; h-1 orders 3 days later, h-2 not. h-1 also got a welcome
/// (marketing) the day before the holdout: its order is the welcome's,
/// since a held-out email was never in the inbox. h-3 is held out after
/// the period: not counted.
fn holdout_shop() -> (Vec<Customer>, Vec<SentEmail>) {
    let mut cancelled = order("s-3-1", "2026-02-02T10:00:00Z", "10");
    cancelled.cancelled = true;
    let customers = vec![
        customer(
            "s-1".into(),
            vec![order("s-1-1", "2026-02-03T10:00:00Z", "10")],
        ),
        customer(
            "s-2".into(),
            vec![order("s-2-1", "2026-02-10T10:00:00Z", "10")],
        ),
        customer("s-3".into(), vec![cancelled]),
        customer("s-4".into(), vec![]),
        customer(
            "h-1".into(),
            vec![order("h-1-1", "2026-02-04T10:00:00Z", "10")],
        ),
        customer("h-2".into(), vec![]),
        customer(
            "h-3".into(),
            vec![order("h-3-1", "2026-04-11T10:00:00Z", "10")],
        ),
    ];
    let mut emails: Vec<SentEmail> = ["s-1", "s-2", "s-3", "s-4"]
        .iter()
        .map(|c| sent(c, "win_back", None, "2026-02-01T10:00:00Z"))
        .collect();
    emails.push(sent("h-1", "welcome", None, "2026-01-31T10:00:00Z"));
    for (c, at) in [
        ("h-1", "2026-02-01T10:00:00Z"),
        ("h-2", "2026-02-01T10:00:00Z"),
        ("h-3", "2026-04-10T10:00:00Z"),
    ] {
        emails.push(SentEmail {
            held_out: true,
            ..sent(c, "win_back", Some("holdout"), at)
        });
    }
    (customers, emails)
}

#[test]
fn a_holdout_group_is_compared_with_the_senders_and_never_credited() {
    let (customers, emails) = holdout_shop();
    let r = compute(&customers, &emails, &settings());
    assert_eq!(
        r.holdouts,
        [holdout::Holdout {
            template: "win_back".into(),
            sent: 4,
            sent_ordered: 1,
            sent_rate: Some(25.0),
            held_out: 2,
            held_out_ordered: 1,
            held_out_rate: Some(50.0),
            // 25 - 50; Newcombe's interval, worked out apart.
            lift: Some(-25.0),
            lift_low: Some(-70.41),
            lift_high: Some(35.53),
        }]
    );
    assert_eq!(
        r.holdouts[0].verdict(),
        "no difference shown yet: keep the holdout running"
    );
    // The held-out emails are neither sent nor a variant of an A/B test.
    let names: Vec<(&str, Option<&str>, u64, u64)> = r
        .emails
        .iter()
        .map(|e| {
            (
                e.template.as_str(),
                e.variant.as_deref(),
                e.sent,
                e.converted,
            )
        })
        .collect();
    assert_eq!(names, [("welcome", None, 1, 1), ("win_back", None, 4, 1)]);
    assert!(r.ab_tests.is_empty());
}

#[test]
fn the_holdout_reads_in_every_format() {
    let (customers, emails) = holdout_shop();
    let report = compute(&customers, &emails, &settings());
    let csv = render::csv(&report);
    for row in [
        "holdout,win_back,sent_rate,25",
        "holdout,win_back,held_out,2",
        "holdout,win_back,lift,-25",
        "holdout,win_back,lift_low,-70.41",
    ] {
        assert!(csv.lines().any(|l| l == row), "{row} in\n{csv}");
    }
    let table = render::table(&report);
    assert!(table.contains("-25.00 pp (-70.41 to +35.53)"), "{table}");
    let page = render::html(&report, "Shop");
    assert!(page.contains("<table id=\"holdouts\">"), "{page}");
    assert!(
        page.contains("<td>-25.00 pp (-70.41 to +35.53)</td>"),
        "{page}"
    );
    // No holdout, no section.
    let plain = compute(&customers, &emails[..4], &settings());
    assert!(plain.holdouts.is_empty());
    assert!(!render::html(&plain, "Shop").contains("holdout"));
}

#[test]
fn a_holdout_verdict_needs_the_whole_interval_on_one_side() {
    let h = |low, high| holdout::Holdout {
        lift_low: low,
        lift_high: high,
        ..holdout::Holdout::default()
    };
    assert_eq!(h(Some(0.5), Some(9.0)).verdict(), "the email brings orders");
    assert_eq!(
        h(Some(-9.0), Some(-0.5)).verdict(),
        "fewer orders with the email"
    );
    assert_eq!(
        h(Some(0.0), Some(9.0)).verdict(),
        "no difference shown yet: keep the holdout running"
    );
    assert_eq!(
        h(None, None).verdict(),
        "not enough emails in one of the groups"
    );
}
