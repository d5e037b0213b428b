//! The administrator's documentation names every option and keyword the code knows, so that
//! a new option cannot be added without being documented.

mod common;

use common::docs::doc;
use msdispatcher::config::{keywords, options};

#[test]
fn every_dispatcher_option_is_in_the_configuration_and_compatibility_docs() {
    for file in ["configuration.md", "compatibility.md"] {
        let text = doc(file);
        let missing: Vec<&str> = options::OPTIONS
            .iter()
            .map(|o| o.name)
            .filter(|n| !text.contains(&format!("`{n}`")))
            .collect();
        assert!(missing.is_empty(), "docs/{file} does not name {missing:?}");
    }
}

#[test]
fn every_channel_keyword_is_in_the_imta_cnf_doc() {
    let text = doc("imta-cnf.md");
    let missing: Vec<&str> = keywords::known()
        .filter(|k| !text.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/imta-cnf.md does not name {missing:?}"
    );
}
