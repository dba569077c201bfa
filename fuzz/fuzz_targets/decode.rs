//! The event decoder on arbitrary bytes: it must refuse what it cannot
//! take, with a reason, and never panic.
#![no_main]

use aftercare::event::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = Event::decode(data) {
        assert!(!e.to_string().is_empty());
    }
});
