//! Fuzzes reading a config file, the first thing `strait proxy`, `strait validate` and every
//! reload do with text a person wrote: YAML (or JSON) as broken as an editor can leave it.
//!
//! Checks that nothing panics; that a refused config gets at least one error, each naming the
//! file, a line and column inside the text (or none), and saying what is wrong; and that a
//! config it takes, shown as `/config_dump` shows it (JSON), reads back as the same config.
//!
//! Seeds: `fuzz/seeds/config_parse` (the example configs). Run with
//! `cargo +nightly fuzz run config_parse fuzz/seeds/config_parse` in `fuzz/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match strait_config::parse(&text, ORIGIN) {
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "refused without an error");
            // A position past the text's end would point the user at nothing. Lines end as
            // YAML ends them: at a line feed, a carriage return (with a line feed after it, one
            // break), a next-line, line-separator or paragraph-separator character.
            let lines = 1 + text
                .replace("\r\n", "\n")
                .matches(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
                .count();
            for e in &errors.errors {
                assert_eq!(e.origin, ORIGIN, "{e}");
                assert!(!e.message.is_empty(), "an error that says nothing: {e:?}");
                assert!(e.line <= lines, "line {} of {lines}: {e}", e.line);
                assert!(e.line == 0 || e.column > 0, "line without a column: {e}");
                let shown = e.to_string();
                assert!(shown.starts_with(ORIGIN), "{shown}");
            }
        }
        Ok(config) => {
            let dumped = serde_json::to_string(&config).expect("a config serializes");
            match strait_config::parse(&dumped, "dump.json") {
                Ok(again) => assert_eq!(again, config, "read back differently: {dumped}"),
                Err(e) => panic!("its own dump is refused: {e}\n{dumped}"),
            }
        }
    }
});
