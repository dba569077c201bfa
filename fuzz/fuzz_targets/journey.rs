//! The journey machine (the shipped journeys) on arbitrary event logs: each
//! line decoded, the valid ones stepped through each customer's journey in
//! turn, as ingest does, the shop's figures updated and each customer's
//! template data built as firing does. No input may panic any of it, and
//! every email it schedules is due at or after the event that scheduled it.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use aftercare::config::Config;
use aftercare::event::{Event, EventKind};
use aftercare::journey::insight::Counted;
use aftercare::journey::{Command, Journey, Rulebook, ShopStats};
use libfuzzer_sys::fuzz_target;

fn journeys() -> &'static Rulebook {
    static JOURNEYS: OnceLock<Rulebook> = OnceLock::new();
    JOURNEYS.get_or_init(|| Rulebook::from_config(Config::embedded().rulebook_config()))
}

fuzz_target!(|data: &[u8]| {
    let mut shop = ShopStats::default();
    let mut states: HashMap<String, Journey> = HashMap::new();
    // Whose each order is, as the store's index keeps it: an event naming
    // its order only is stepped as that customer's.
    let mut orders: HashMap<String, String> = HashMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Ok(event) = Event::decode(line) else {
            continue;
        };
        let customer = match event.customer_id() {
            Some(named) => named.to_owned(),
            None => match orders.get(event.kind.order_id()) {
                Some(owner) => owner.clone(),
                None => continue,
            },
        };
        let event = event.resolve(customer);
        if let EventKind::OrderPlaced { order } = &event.kind {
            orders
                .entry(order.id.clone())
                .or_insert_with(|| event.customer.id.clone());
        }
        let state = states.get(&event.customer.id).cloned();
        if let Ok(transition) = journeys().step_with(state, &event, &shop) {
            for command in &transition.commands {
                if let Command::Schedule(email) = command {
                    assert!(email.due_at >= event.occurred_at, "{email:?} before {event:?}");
                }
            }
            let before = states
                .get(&event.customer.id)
                .map(Counted::of)
                .unwrap_or_default();
            shop.record(&before, &Counted::of(&transition.state));
            let _ = journeys().insights(&transition.state, event.occurred_at, &shop, "en");
            states.insert(event.customer.id.clone(), transition.state);
        }
    }
});
