//! Any string as an image reference: never a panic; what is accepted is accepted again, with the
//! same parts, when written in its normalized form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinhook::reference::ImageRef;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(image) = ImageRef::parse_uncached(text) else {
        return;
    };
    assert!(!text.is_empty() && text.trim() == text, "{text:?}");
    let again = ImageRef::parse_uncached(&image.normalized()).unwrap_or_else(|e| {
        panic!(
            "{text:?} normalizes to {} which is refused: {e}",
            image.normalized()
        )
    });
    assert_eq!(
        (
            again.registry(),
            again.repository(),
            again.tag(),
            again.digest()
        ),
        (
            image.registry(),
            image.repository(),
            image.tag(),
            image.digest()
        ),
        "{text:?}"
    );
    if let Some(digest) = image.digest() {
        assert!(image.is_pinned() && digest.contains(':'));
    }
});
