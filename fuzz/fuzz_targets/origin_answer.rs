#![no_main]
// The body lives in shoal::fuzzing, shared with tests/fuzz_corpus.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal::fuzzing::origin_answer(data));
