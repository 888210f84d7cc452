//! What `strait validate` checks beyond the config's own text: the files it names, read and
//! parsed as the proxy reads them at start (certificates, keys, CA bundles, OCSP staples,
//! clusters' client certificates, JWKS files). Without it, `validate` passed a config whose
//! certificate was missing or whose key did not match, and the proxy then refused to start.

use std::sync::Arc;

use strait_config::Config;

use crate::jwt::Keys;
use crate::tls::{ClientTls, ServerTls};

/// Every file of `config` the proxy could not load, as `field: file: why` (the field path as
/// the proxy names it at start). Nothing is kept: a file is read, parsed and dropped.
pub fn files(config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(tls) = &l.tls {
            if let Err(e) = ServerTls::compile(&l.name, tls) {
                errors.push(format!("listeners[{i}].tls: {e}"));
            }
        }
        if let Some(path) = l.jwt.as_ref().and_then(|j| j.jwks.file.as_ref()) {
            if let Err(e) = Keys::from_file(path) {
                errors.push(format!("listeners[{i}].jwt.jwks.file: {e}"));
            }
        }
    }
    for (i, c) in config.clusters.iter().enumerate() {
        if let Some(tls) = &c.tls {
            if let Err(e) = ClientTls::compile(&c.name, tls, false, &[], Arc::default()) {
                errors.push(format!("clusters[{i}].tls: {e}"));
            }
        }
    }
    errors
}
