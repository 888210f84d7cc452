//! Checks that the types alone cannot express: references resolve, names are unique, values
//! are in range, regular expressions compile.

use std::collections::HashSet;

use crate::model::*;

/// One semantic problem, located by field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub field: String,
    pub message: String,
}

pub(crate) fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut say = |field: String, message: String| problems.push(Problem { field, message });
    let clusters: HashSet<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
    for (li, listener) in config.listeners.iter().enumerate() {
        for (ri, route) in listener.routes.iter().enumerate() {
            for (bi, backend) in route.backends.iter().enumerate() {
                if !clusters.contains(backend.cluster.as_str()) {
                    say(
                        format!("listeners[{li}].routes[{ri}].backends[{bi}].cluster"),
                        format!(
                            "no cluster named {:?}; declare it under `clusters`",
                            backend.cluster
                        ),
                    );
                }
            }
        }
    }
    problems
}
