//! Any bytes as the body of a review, through the whole router (`/validate` or `/mutate`, chosen
//! by the first byte): a known status and a well-formed answer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let path = match selector % 3 {
        0 => "/validate",
        1 => "/mutate",
        _ => "/mutate?timeout=5s",
    };
    let (status, answer) = pinhook_fuzz::send(path, body.to_vec());
    let object = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/request/object").cloned());
    pinhook_fuzz::check_answer(status, &answer, object.as_ref());
});
