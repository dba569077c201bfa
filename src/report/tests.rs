//! The report's figures on small histories worked out by hand.

use super::*;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn order(id: &str, at: &str, total: &str) -> Order {
    Order {
        id: id.into(),
        placed_at: t(at),
        total: total.parse().unwrap(),
        currency: "EUR".into(),
        cancelled: false,
        returns: Vec::new(),
    }
}

fn customer(id: String, orders: Vec<Order>) -> Customer {
    Customer {
        id,
        orders,
        segment: Segment::Regular,
    }
}

fn settings() -> Settings {
    Settings {
        from: t("2026-01-01T00:00:00Z"),
        to: t("2026-04-01T00:00:00Z"),
        active_window: SignedDuration::from_hours(180 * 24),
        attribution_window: SignedDuration::from_hours(5 * 24),
    }
}

/// S = 500 active at the start (400 who stay, 100 whose last order falls
/// out of the window), N = 50 new, E = 400 + 50 = 450.
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
    assert_eq!(
        (r.active_at_start, r.new_customers, r.active_at_end),
        (500, 50, 450)
    );
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
    // 40 x 170/150 x (1 / 0.20) = 226.666...
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
