//! The journey machine (the shipped journeys) on arbitrary event logs: each
//! line decoded, the valid ones stepped through each customer's journey in
//! turn, as ingest does. No input may panic it, and every email it
//! schedules is due at or after the event that scheduled it.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use aftercare::config::Config;
use aftercare::event::Event;
use aftercare::journey::{Command, Journey, Journeys, ShopStats};
use libfuzzer_sys::fuzz_target;

fn journeys() -> &'static Journeys {
    static JOURNEYS: OnceLock<Journeys> = OnceLock::new();
    JOURNEYS.get_or_init(|| Journeys::from_config(&Config::embedded()))
}

fuzz_target!(|data: &[u8]| {
    let shop = ShopStats::default();
    let mut states: HashMap<String, Journey> = HashMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Ok(event) = Event::decode(line) else {
            continue;
        };
        let state = states.get(&event.customer.id).cloned();
        if let Ok(transition) = journeys().step_with(state, &event, &shop) {
            for command in &transition.commands {
                if let Command::Schedule(email) = command {
                    assert!(email.due_at >= event.occurred_at, "{email:?} before {event:?}");
                }
            }
            states.insert(event.customer.id.clone(), transition.state);
        }
    }
});
