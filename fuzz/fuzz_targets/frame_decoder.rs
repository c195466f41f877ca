#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walrus_async::fuzzing::fuzz_frames(data);
});
