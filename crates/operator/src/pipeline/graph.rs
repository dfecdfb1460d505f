//! Checks on the step graph: unique ids, known dependencies, no cycles, and input references
//! that only reach back to ancestors (a step can only read outputs that exist when it starts).

use std::collections::{BTreeSet, HashMap};

use super::refs::{Piece, for_each_string, pieces};
use super::schema::Cx;
use super::source::{child_index, child_key};
use super::{Definition, DefinitionError, codes};

pub(crate) fn check(cx: &Cx<'_>, def: &Definition) -> Result<(), DefinitionError> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(def.steps.len());
    for (i, step) in def.steps.iter().enumerate() {
        if let Some(first) = index.insert(step.id.as_str(), i) {
            return Err(cx.err(
                codes::DUPLICATE_STEP,
                &child_key(&child_index("steps", i), "id"),
                format!(
                    "step id `{}` is used by steps[{first}] and steps[{i}]",
                    step.id
                ),
            ));
        }
    }
    for (i, step) in def.steps.iter().enumerate() {
        for (k, dep) in step.depends_on.iter().enumerate() {
            let path = child_index(&child_key(&child_index("steps", i), "depends_on"), k);
            if *dep == step.id {
                return Err(cx.err(
                    codes::UNKNOWN_STEP,
                    &path,
                    format!("step `{}` depends on itself", step.id),
                ));
            }
            if !index.contains_key(dep.as_str()) {
                return Err(cx.err(
                    codes::UNKNOWN_STEP,
                    &path,
                    format!(
                        "step `{}` depends on `{dep}`, which is not a step of this pipeline",
                        step.id
                    ),
                ));
            }
        }
    }
    let deps: Vec<Vec<usize>> = def
        .steps
        .iter()
        .map(|s| {
            s.depends_on
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    if let Some(cycle) = find_cycle(&deps) {
        let first = cycle[0];
        let names: Vec<&str> = cycle
            .iter()
            .chain(std::iter::once(&first))
            .map(|&i| def.steps[i].id.as_str())
            .collect();
        return Err(cx.err(
            codes::CYCLE,
            &child_key(&child_index("steps", first), "depends_on"),
            format!(
                "steps depend on each other in a cycle: {} (read `a → b` as \"a depends on b\")",
                names.join(" → ")
            ),
        ));
    }
    for (i, step) in def.steps.iter().enumerate() {
        let ancestors = ancestors(&deps, i);
        let base = child_key(&child_index("steps", i), "inputs");
        for_each_string(&step.inputs, &base, &mut |path, text| {
            let parts = pieces(text)
                .map_err(|m| cx.err(codes::INPUT_REF, path, format!("step `{}`: {m}", step.id)))?;
            for part in parts {
                let Piece::StepOutput { step: target, name } = part else {
                    continue;
                };
                let reachable = index.get(target).is_some_and(|t| ancestors.contains(t));
                if !reachable {
                    let why = if target == step.id {
                        "a step can't read its own outputs".to_owned()
                    } else if index.contains_key(target) {
                        format!(
                            "`{target}` is not among the steps it depends on, directly or through others; add it to `depends_on`"
                        )
                    } else {
                        format!("`{target}` is not a step of this pipeline")
                    };
                    return Err(cx.err(
                        codes::INPUT_REF,
                        path,
                        format!(
                            "step `{}` reads `${{steps.{target}.outputs.{name}}}`: {why}",
                            step.id
                        ),
                    ));
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// The steps `start` depends on, directly or transitively (the graph has no cycle).
fn ancestors(deps: &[Vec<usize>], start: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<usize> = deps[start].clone();
    while let Some(i) = stack.pop() {
        if seen.insert(i) {
            stack.extend(&deps[i]);
        }
    }
    seen
}

/// One cycle through `deps` (step → the steps it depends on), as step indexes in dependency
/// order, starting from the earliest step in source order that lies on it.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; deps.len()];
    for root in 0..deps.len() {
        if marks[root] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next edge to follow); `path` mirrors the nodes on the stack.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        let mut path: Vec<usize> = vec![root];
        marks[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
            if let Some(&next) = deps[node].get(*edge) {
                *edge += 1;
                match marks[next] {
                    Mark::New => {
                        marks[next] = Mark::OnPath;
                        stack.push((next, 0));
                        path.push(next);
                    }
                    Mark::OnPath => {
                        let from = path.iter().position(|&n| n == next).unwrap_or(0);
                        let mut cycle = path[from..].to_vec();
                        // Rotate so the cycle starts at its earliest step in source order.
                        if let Some(min_at) = cycle
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, n)| **n)
                            .map(|(i, _)| i)
                        {
                            cycle.rotate_left(min_at);
                        }
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                stack.pop();
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cycle found is the real one, in dependency order, from its earliest step.
    #[test]
    fn finds_cycles_in_order() {
        // 0 → 1 → 2 → 0, plus 3 depending on 0.
        assert_eq!(
            find_cycle(&[vec![1], vec![2], vec![0], vec![0]]),
            Some(vec![0, 1, 2])
        );
        // 0 is fine; 2 → 1 → 2 (entered from 0).
        assert_eq!(find_cycle(&[vec![2], vec![2], vec![1]]), Some(vec![1, 2]));
        assert_eq!(find_cycle(&[vec![], vec![0], vec![0, 1]]), None);
    }
}
