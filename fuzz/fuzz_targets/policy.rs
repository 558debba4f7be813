//! Any text as a policy file: a precise error or a policy, never a panic; a policy that loads
//! judges images without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinhook::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_yaml(text, "fuzz.yaml") {
        Ok(policy) => {
            for namespace in ["default", "kube-system", "sandbox-1", "payments"] {
                if let Some(profile) = policy.profile_for(namespace) {
                    for image in [
                        "nginx",
                        "nginx:latest",
                        "ghcr.io/a/b:1.2.3",
                        "registry.internal:5000/x:dev-1",
                    ] {
                        let _ = profile.judge(image);
                    }
                }
            }
        }
        Err(e) => assert!(
            e.to_string().contains("fuzz.yaml"),
            "the error names the file: {e}"
        ),
    }
});
