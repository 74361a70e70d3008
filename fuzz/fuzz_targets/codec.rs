#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = customer_profile::fuzzing::codec(data) {
        panic!("codec: {broken}");
    }
});
