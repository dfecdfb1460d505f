#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

fn yaml(src: &str) -> Result<Definition, DefinitionError> {
    parse(src, Format::Yaml)
}

fn yaml_err(src: &str) -> DefinitionError {
    yaml(src).expect_err("should be refused")
}

/// Asserts the code, path and line of a refusal, and that its message names `mention`.
#[track_caller]
fn assert_refused(src: &str, code: &str, path: Option<&str>, line: Option<usize>, mention: &str) {
    let e = yaml_err(src);
    assert_eq!(e.code, code, "{e}");
    assert_eq!(e.path.as_deref(), path, "{e}");
    assert_eq!(e.line, line, "{e}");
    assert!(e.message.contains(mention), "`{mention}` not in: {e}");
}

const FULL: &str = r#"
description: Ship a change
steps:
  - id: plan
    role: planner
    processor: builtin:echo
    inputs:
      goal: "${run.inputs.goal}"
  - id: build
    role: builder
    processor: http://127.0.0.1:9000/
    depends_on: [plan]
    inputs:
      plan: "${steps.plan.outputs.goal}"
      nested: {list: ["fix ${run.inputs.ticket}", 3, true, null], literal: "$${not.a.ref}"}
    retries: {max_attempts: 4, backoff_base: 500ms, backoff_cap: 90s, jitter: false}
    timeout: 45m
    on_failure: continue
  - id: deploy
    role: deployer
    processor: builtin:sleep
    depends_on: [build]
    inputs: {ms: 10}
    gate: {approval: true, environment: production}
triggers:
  - cron: "*/5 * * * *"
    timezone: Europe/Paris
    inputs: {goal: nightly}
  - cron: "@daily"
"#;

/// A complete definition parses with every field, and defaults fill what it leaves out.
#[test]
fn a_full_definition_parses() {
    let def = yaml(FULL).unwrap();
    assert_eq!(def.description.as_deref(), Some("Ship a change"));
    assert_eq!(def.steps.len(), 3);
    let plan = def.step("plan").unwrap();
    assert_eq!(plan.retries, Retries::default());
    assert_eq!(plan.timeout, None);
    assert_eq!(plan.on_failure, OnFailure::Fail);
    assert_eq!(plan.gate, None);
    let build = def.step("build").unwrap();
    assert_eq!(build.processor.to_string(), "http://127.0.0.1:9000");
    assert_eq!(
        build.retries,
        Retries {
            max_attempts: 4,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(90),
            jitter: false
        }
    );
    assert_eq!(build.timeout, Some(Duration::from_secs(45 * 60)));
    assert_eq!(build.on_failure, OnFailure::Continue);
    assert_eq!(
        def.step("deploy").unwrap().gate,
        Some(Gate {
            approval: true,
            environment: Some("production".into())
        })
    );
    assert_eq!(def.triggers.len(), 2);
    assert_eq!(def.triggers[0].cron.timezone(), "Europe/Paris");
    assert_eq!(def.triggers[0].inputs["goal"], json!("nightly"));
    assert_eq!(def.triggers[1].cron.timezone(), "UTC");
    assert_eq!(def.roots(), vec!["plan"]);
    assert_eq!(def.dependents("plan"), vec!["build"]);
    assert_eq!(def.dependents("deploy"), Vec::<&str>::new());
    assert!(def.step("nope").is_none());
}

/// The JSON a definition serializes to is what a user would write, defaults included.
#[test]
fn serializes_to_the_written_form() {
    let def = yaml(FULL).unwrap();
    let json = serde_json::to_value(&def).unwrap();
    assert_eq!(
        json["steps"][0],
        json!({
            "id": "plan", "role": "planner", "processor": "builtin:echo",
            "inputs": {"goal": "${run.inputs.goal}"}, "depends_on": [],
            "retries": {"max_attempts": 1, "backoff_base": "1s", "backoff_cap": "1m", "jitter": true},
            "on_failure": "fail"
        })
    );
    assert_eq!(json["steps"][1]["retries"]["backoff_cap"], json!("90s"));
    assert_eq!(json["steps"][1]["timeout"], json!("45m"));
    assert_eq!(
        json["steps"][2]["gate"],
        json!({"approval": true, "environment": "production"})
    );
    assert_eq!(
        json["triggers"][0],
        json!({"cron": "*/5 * * * *", "timezone": "Europe/Paris", "inputs": {"goal": "nightly"}})
    );
    // The snapshot reads back equal, through parse and through Deserialize.
    let text = serde_json::to_string(&def).unwrap();
    assert_eq!(parse(&text, Format::Json).unwrap(), def);
    assert_eq!(serde_json::from_str::<Definition>(&text).unwrap(), def);
    // Deserializing validates: a broken snapshot is refused.
    let broken = text.replace("\"plan\"", "\"Plan\"");
    assert!(serde_json::from_str::<Definition>(&broken).is_err());
}

/// Every shipped template parses, matches its listed description, and round-trips.
#[test]
fn every_template_parses() {
    assert_eq!(
        templates::all().iter().map(|t| t.name).collect::<Vec<_>>(),
        vec!["feature", "hotfix", "data"]
    );
    for t in templates::all() {
        let def = yaml(t.source).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        assert_eq!(
            def.description.as_deref(),
            Some(t.description),
            "{}",
            t.name
        );
        assert!(
            def.steps.iter().all(|s| s.processor.is_builtin()),
            "{}",
            t.name
        );
        let text = serde_json::to_string(&def).unwrap();
        assert_eq!(parse(&text, Format::Json).unwrap(), def, "{}", t.name);
    }
    let feature = yaml(templates::get("feature").unwrap().source).unwrap();
    assert_eq!(feature.dependents("implement"), vec!["test", "lint"]);
    assert_eq!(
        feature.step("review").unwrap().depends_on,
        vec!["test", "lint"]
    );
    let gate = feature.step("deploy").unwrap().gate.clone().unwrap();
    assert!(gate.approval);
    assert_eq!(gate.environment.as_deref(), Some("production"));
    assert!(
        yaml(templates::get("hotfix").unwrap().source)
            .unwrap()
            .step("deploy")
            .unwrap()
            .gate
            .is_some()
    );
    assert_eq!(
        yaml(templates::get("data").unwrap().source)
            .unwrap()
            .triggers
            .len(),
        1
    );
    assert!(templates::get("nope").is_none());
}

/// A template resolves step by step when echo returns its inputs as outputs.
#[test]
fn feature_template_inputs_resolve() {
    let def = yaml(templates::get("feature").unwrap().source).unwrap();
    let run = json!({"ticket": "BOS-1", "summary": "dark mode"});
    let run = run.as_object().unwrap();
    let plan = resolve_inputs(def.step("plan").unwrap(), run, &BTreeMap::new()).unwrap();
    assert_eq!(
        plan,
        json!({"ticket": "BOS-1", "plan": "Plan for BOS-1: dark mode"})
    );
    let mut outputs = BTreeMap::new();
    outputs.insert(
        "plan".to_owned(),
        BTreeMap::from([("plan".to_owned(), "Plan for BOS-1: dark mode".to_owned())]),
    );
    let implement = resolve_inputs(def.step("implement").unwrap(), run, &outputs).unwrap();
    assert_eq!(implement["plan"], json!("Plan for BOS-1: dark mode"));
}

// --- one test per error code -------------------------------------------------------------

/// Text that is not YAML or JSON is ERR_PIPELINE_PARSE with its line.
#[test]
fn parse_errors_give_the_line() {
    let e = yaml_err("steps:\n  - id: a\n    inputs: [unclosed\n");
    assert_eq!(e.code, codes::PARSE, "{e}");
    assert!(e.line.is_some_and(|l| l >= 3), "{e}");
    let e = yaml_err("steps: []\nsteps: []\n");
    assert_eq!(e.code, codes::PARSE, "{e}");
    let e = parse(
        "{\n  \"steps\": [\n    {\"id\": \"a\",,}\n  ]\n}",
        Format::Json,
    )
    .unwrap_err();
    assert_eq!((e.code, e.line), (codes::PARSE, Some(3)), "{e}");
    let e = parse("{\"steps\": [], \"steps\": []}", Format::Json).unwrap_err();
    assert_eq!(e.code, codes::PARSE, "{e}");
    assert!(e.message.contains("twice"), "{e}");
    let big = format!("description: \"{}\"", "x".repeat(MAX_SOURCE_BYTES));
    assert_eq!(yaml_err(&big).code, codes::PARSE);
}

const STEP_A: &str = "  - id: a\n    role: builder\n    processor: builtin:echo\n";

/// Unknown and missing fields, wrong types, bad slugs and step counts are ERR_PIPELINE_SCHEMA
/// with the field's path and line.
#[test]
fn schema_errors_name_path_and_line() {
    use codes::SCHEMA;
    assert_refused("- a\n", SCHEMA, None, Some(1), "must be a mapping");
    assert_refused(
        "description: x\n",
        SCHEMA,
        Some("steps"),
        Some(1),
        "needs `steps`",
    );
    assert_refused("steps: []\n", SCHEMA, Some("steps"), Some(1), "empty");
    assert_refused(
        "name: x\nsteps: []\n",
        SCHEMA,
        Some("name"),
        Some(1),
        "unknown field `name`",
    );
    assert_refused(
        &format!("steps:\n{STEP_A}    retry: 3\n"),
        SCHEMA,
        Some("steps[0].retry"),
        Some(5),
        "unknown field `retry`",
    );
    assert_refused(
        &format!("steps:\n{STEP_A}    retries:\n      max_attempts: 2\n      factor: 3\n"),
        SCHEMA,
        Some("steps[0].retries.factor"),
        Some(7),
        "unknown field `factor`",
    );
    assert_refused(
        &format!("steps:\n{STEP_A}    gate: {{approval: true, env: prod}}\n"),
        SCHEMA,
        Some("steps[0].gate.env"),
        Some(5),
        "unknown field `env`",
    );
    assert_refused(
        "steps:\n  - id: a\n    processor: builtin:echo\n",
        SCHEMA,
        Some("steps[0].role"),
        Some(2),
        "step `a` has no `role`",
    );
    assert_refused(
        "steps:\n  - id: Plan\n    role: planner\n    processor: builtin:echo\n",
        SCHEMA,
        Some("steps[0].id"),
        Some(2),
        "`Plan` is not a slug",
    );
    assert_refused(
        "steps:\n  - id: a\n    role: Lead Planner\n    processor: builtin:echo\n",
        SCHEMA,
        Some("steps[0].role"),
        Some(3),
        "step `a`",
    );
    assert_refused(
        &format!("steps:\n{STEP_A}    timeout: 30\n"),
        SCHEMA,
        Some("steps[0].timeout"),
        Some(5),
        "must be a string",
    );
    assert_refused(
        &format!("steps:\n{STEP_A}    depends_on: a\n"),
        SCHEMA,
        Some("steps[0].depends_on"),
        Some(5),
        "must be a list",
    );
    assert_refused(
        &format!(
            "steps:\n{STEP_A}  - id: b\n    role: x\n    processor: builtin:echo\n    depends_on: [a, a]\n"
        ),
        SCHEMA,
        Some("steps[1].depends_on[1]"),
        Some(8),
        "twice",
    );
    assert_refused(
        &format!("steps:\n{STEP_A}    on_failure: ignore\n"),
        SCHEMA,
        Some("steps[0].on_failure"),
        Some(5),
        "`fail` or `continue`",
    );
    assert_refused(
        &format!("steps:\n{STEP_A}    gate: {{approval: true, environment: Prod}}\n"),
        SCHEMA,
        Some("steps[0].gate.environment"),
        Some(5),
        "not a slug",
    );
    assert_refused(
        &format!("steps:\n{STEP_A}    inputs: [1]\n"),
        SCHEMA,
        Some("steps[0].inputs"),
        Some(5),
        "must be a mapping",
    );
    assert_refused(
        &format!("steps:\n{STEP_A}triggers:\n  - timezone: UTC\n"),
        SCHEMA,
        Some("triggers[0].cron"),
        Some(6),
        "no `cron`",
    );
    let many: String = (0..=MAX_STEPS)
        .map(|i| format!("  - {{id: s{i}, role: r, processor: \"builtin:echo\"}}\n"))
        .collect();
    assert_refused(
        &format!("steps:\n{many}"),
        SCHEMA,
        Some("steps"),
        Some(1),
        "at most 200",
    );
}

/// JSON definitions get lines too, learned from the same text.
#[test]
fn json_errors_have_lines() {
    let src = "{\n  \"steps\": [\n    {\n      \"id\": \"a\",\n      \"role\": \"r\",\n      \"processor\": \"builtin:echo\",\n      \"timeout\": \"9d\"\n    }\n  ]\n}\n";
    let e = parse(src, Format::Json).unwrap_err();
    assert_eq!(
        (e.code, e.path.as_deref(), e.line),
        (codes::TIMEOUT, Some("steps[0].timeout"), Some(7)),
        "{e}"
    );
}

/// Two steps with one id are ERR_PIPELINE_DUPLICATE_STEP at the second.
#[test]
fn duplicate_steps() {
    assert_refused(
        &format!("steps:\n{STEP_A}{STEP_A}"),
        codes::DUPLICATE_STEP,
        Some("steps[1].id"),
        Some(5),
        "step id `a` is used by steps[0] and steps[1]",
    );
}

/// depends_on naming a missing step, or the step itself, is ERR_PIPELINE_UNKNOWN_STEP.
#[test]
fn unknown_steps() {
    assert_refused(
        &format!("steps:\n{STEP_A}    depends_on: [ghost]\n"),
        codes::UNKNOWN_STEP,
        Some("steps[0].depends_on[0]"),
        Some(5),
        "step `a` depends on `ghost`",
    );
    assert_refused(
        &format!("steps:\n{STEP_A}    depends_on:\n      - a\n"),
        codes::UNKNOWN_STEP,
        Some("steps[0].depends_on[0]"),
        Some(6),
        "depends on itself",
    );
}

/// A cycle is ERR_PIPELINE_CYCLE naming its steps in order.
#[test]
fn cycles() {
    let src = "steps:\n  - {id: start, role: r, processor: \"builtin:echo\"}\n  - {id: a, role: r, processor: \"builtin:echo\", depends_on: [start, c]}\n  - {id: b, role: r, processor: \"builtin:echo\", depends_on: [a]}\n  - {id: c, role: r, processor: \"builtin:echo\", depends_on: [b]}\n";
    assert_refused(
        src,
        codes::CYCLE,
        Some("steps[1].depends_on"),
        Some(3),
        "a → c → b → a",
    );
}

/// Out-of-range attempts and bad backoffs are ERR_PIPELINE_RETRIES.
#[test]
fn retries_bounds() {
    for (retries, path, mention) in [
        (
            "{max_attempts: 0}",
            "steps[0].retries.max_attempts",
            "between 1 and 10",
        ),
        (
            "{max_attempts: 11}",
            "steps[0].retries.max_attempts",
            "between 1 and 10",
        ),
        (
            "{max_attempts: -1}",
            "steps[0].retries.max_attempts",
            "between 1 and 10",
        ),
        (
            "{backoff_base: 1 second}",
            "steps[0].retries.backoff_base",
            "not a duration",
        ),
        (
            "{backoff_cap: 25h}",
            "steps[0].retries.backoff_cap",
            "longer than",
        ),
        (
            "{backoff_base: 10s, backoff_cap: 5s}",
            "steps[0].retries.backoff_cap",
            "shorter than",
        ),
        (
            "{backoff_base: 2m}",
            "steps[0].retries.backoff_base",
            "shorter than",
        ),
    ] {
        let e = yaml_err(&format!("steps:\n{STEP_A}    retries: {retries}\n"));
        assert_eq!(e.code, codes::RETRIES, "{retries}: {e}");
        assert_eq!(e.path.as_deref(), Some(path), "{retries}: {e}");
        assert_eq!(e.line, Some(5), "{retries}: {e}");
        assert!(
            e.message.contains(mention) && e.message.contains("step `a`"),
            "{retries}: {e}"
        );
    }
    // A fractional count is the wrong type.
    assert_eq!(
        yaml_err(&format!(
            "steps:\n{STEP_A}    retries: {{max_attempts: 1.5}}\n"
        ))
        .code,
        codes::SCHEMA
    );
}

/// Malformed or out-of-bounds timeouts are ERR_PIPELINE_TIMEOUT.
#[test]
fn timeout_bounds() {
    for t in ["0s", "25h", "5 minutes", "1.5s", "10"] {
        assert_refused(
            &format!("steps:\n{STEP_A}    timeout: \"{t}\"\n"),
            codes::TIMEOUT,
            Some("steps[0].timeout"),
            Some(5),
            "step `a`: timeout",
        );
    }
}

/// A processor that ProcessorRef refuses is ERR_PIPELINE_PROCESSOR.
#[test]
fn processors() {
    assert_refused(
        "steps:\n  - id: a\n    role: r\n    processor: builtin:teleport\n",
        codes::PROCESSOR,
        Some("steps[0].processor"),
        Some(4),
        "unknown builtin processor `teleport`",
    );
    assert_refused(
        "steps:\n  - id: a\n    role: r\n    processor: ftp://x\n",
        codes::PROCESSOR,
        Some("steps[0].processor"),
        Some(4),
        "step `a`",
    );
}

/// References to non-ancestors, unknown steps, or malformed ones are ERR_PIPELINE_INPUT_REF.
#[test]
fn input_references() {
    let two = |inputs: &str| {
        format!(
            "steps:\n{STEP_A}  - id: b\n    role: r\n    processor: builtin:echo\n    inputs:\n      {inputs}\n  - id: c\n    role: r\n    processor: builtin:echo\n    depends_on: [b]\n"
        )
    };
    // `a` is a sibling, not an ancestor, of `b`.
    assert_refused(
        &two("x: \"${steps.a.outputs.plan}\""),
        codes::INPUT_REF,
        Some("steps[1].inputs.x"),
        Some(9),
        "`a` is not among the steps it depends on",
    );
    // A descendant is not an ancestor either.
    assert_refused(
        &two("x: [\"see ${steps.c.outputs.y}\"]"),
        codes::INPUT_REF,
        Some("steps[1].inputs.x[0]"),
        Some(9),
        "step `b` reads `${steps.c.outputs.y}`",
    );
    assert_refused(
        &two("x: {deep: \"${steps.ghost.outputs.y}\"}"),
        codes::INPUT_REF,
        Some("steps[1].inputs.x.deep"),
        Some(9),
        "not a step of this pipeline",
    );
    assert_refused(
        &two("x: \"${steps.b.outputs.y}\""),
        codes::INPUT_REF,
        Some("steps[1].inputs.x"),
        Some(9),
        "its own outputs",
    );
    assert_refused(
        &two("x: \"${run.input.y}\""),
        codes::INPUT_REF,
        Some("steps[1].inputs.x"),
        Some(9),
        "is not a reference",
    );
    // Transitive ancestors are fine; escapes are not references.
    let ok = format!(
        "steps:\n{STEP_A}  - {{id: b, role: r, processor: \"builtin:echo\", depends_on: [a]}}\n  - id: c\n    role: r\n    processor: builtin:echo\n    depends_on: [b]\n    inputs: {{x: \"${{steps.a.outputs.p}}\", y: \"$${{steps.zzz.outputs.q}}\"}}\n"
    );
    yaml(&ok).unwrap();
}

/// Bad cron expressions and zones in triggers carry the cron codes and the trigger's path.
#[test]
fn trigger_errors() {
    assert_refused(
        &format!("steps:\n{STEP_A}triggers:\n  - cron: \"0 0 * * * *\"\n"),
        codes::CRON_INVALID,
        Some("triggers[0].cron"),
        Some(6),
        "5",
    );
    assert_refused(
        &format!(
            "steps:\n{STEP_A}triggers:\n  - cron: \"@daily\"\n  - cron: \"0 3 * * *\"\n    timezone: Mars/Base\n"
        ),
        codes::TIMEZONE_INVALID,
        Some("triggers[1].timezone"),
        Some(8),
        "Mars/Base",
    );
}

// --- resolving references -------------------------------------------------------------------

fn step_with(inputs: Value) -> Step {
    let mut def = yaml(&format!("steps:\n{STEP_A}")).unwrap();
    let mut step = def.steps.remove(0);
    step.inputs = inputs.as_object().cloned().unwrap();
    step
}

/// Exact references keep the run input's JSON type; embedded ones interpolate text.
#[test]
fn resolves_exact_and_embedded_references() {
    let step = step_with(json!({
        "n": "${run.inputs.count}",
        "obj": "${run.inputs.config}",
        "text": "fix ${run.inputs.ticket} with ${run.inputs.count} tries: ${steps.plan.outputs.plan.md}",
        "deep": [{"x": "${steps.plan.outputs.plan.md}"}, 7, null],
        "escaped": "$${run.inputs.ticket} costs $5",
        "plain": "nothing here",
    }));
    let run = json!({"ticket": "BOS-9", "count": 3, "config": {"a": [1]}});
    let outputs = BTreeMap::from([(
        "plan".to_owned(),
        BTreeMap::from([("plan.md".to_owned(), "# Plan".to_owned())]),
    )]);
    let resolved = resolve_inputs(&step, run.as_object().unwrap(), &outputs).unwrap();
    assert_eq!(
        resolved,
        json!({
            "n": 3,
            "obj": {"a": [1]},
            "text": "fix BOS-9 with 3 tries: # Plan",
            "deep": [{"x": "# Plan"}, 7, null],
            "escaped": "${run.inputs.ticket} costs $5",
            "plain": "nothing here",
        })
    );
}

/// A missing run input or output at run time is ERR_PIPELINE_INPUT_REF naming it.
#[test]
fn resolving_missing_values_fails() {
    let step = step_with(json!({"t": ["${run.inputs.ticket}"]}));
    let e = resolve_inputs(&step, &Map::new(), &BTreeMap::new()).unwrap_err();
    assert_eq!(e.code, codes::INPUT_REF);
    assert_eq!(e.path.as_deref(), Some("inputs.t[0]"));
    assert!(
        e.message.contains("step `a`") && e.message.contains("`ticket`"),
        "{e}"
    );
    let step = step_with(json!({"p": "see ${steps.plan.outputs.plan}"}));
    let outputs = BTreeMap::from([("plan".to_owned(), BTreeMap::new())]);
    let e = resolve_inputs(&step, &Map::new(), &outputs).unwrap_err();
    assert!(
        e.message.contains("step `plan` has no output `plan`"),
        "{e}"
    );
}

/// The error's Display carries code, line and path.
#[test]
fn error_display() {
    let e = yaml_err(&format!("steps:\n{STEP_A}    timeout: 2d\n"));
    assert_eq!(
        e.to_string(),
        format!(
            "ERR_PIPELINE_TIMEOUT: line 5, steps[0].timeout: {}",
            e.message
        )
    );
}

// --- retries --------------------------------------------------------------------------------

/// Without jitter the delay doubles from the base and stops at the cap.
#[test]
fn backoff_doubles_to_the_cap() {
    let r = Retries {
        max_attempts: 10,
        jitter: false,
        ..Retries::default()
    };
    let delays: Vec<u64> = (1..=10).map(|n| r.delay_before(n).as_secs()).collect();
    assert_eq!(delays, vec![0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(r.delay_before(u32::MAX), Duration::from_secs(60));
}

proptest! {
    /// With jitter every delay lies in [delay/2, delay].
    #[test]
    fn jittered_delays_stay_in_range(base_ms in 1u64..5_000, cap_extra in 0u64..100_000, n in 2u32..40) {
        let r = Retries {
            max_attempts: 10,
            backoff_base: Duration::from_millis(base_ms),
            backoff_cap: Duration::from_millis(base_ms + cap_extra),
            jitter: true,
        };
        let plain = Retries { jitter: false, ..r.clone() }.delay_before(n);
        let d = r.delay_before(n);
        prop_assert!(d >= plain / 2 && d <= plain, "{d:?} vs {plain:?}");
    }

    /// Any valid definition serializes to JSON that parses back equal (the run snapshot).
    #[test]
    fn json_round_trip(def in arb_definition()) {
        let text = serde_json::to_string(&def).unwrap();
        prop_assert_eq!(parse(&text, Format::Json).unwrap(), def);
    }
}

fn arb_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1u64..1000).prop_map(Duration::from_millis),
        (1u64..86_400).prop_map(Duration::from_secs),
        (1u64..=24).prop_map(|h| Duration::from_secs(h * 3600)),
    ]
}

fn arb_input() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z $]{0,12}".prop_map(Value::String),
        "[a-z_]{1,8}".prop_map(|k| Value::String(format!("${{run.inputs.{k}}}"))),
        "[a-z]{1,8}".prop_map(|k| Value::String(format!("x $${{steps.{k}.outputs.y}}"))),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_step(index: usize) -> impl Strategy<Value = Step> {
    (
        "[a-z]{1,8}",
        prop_oneof![
            Just("builtin:echo"),
            Just("builtin:sleep"),
            Just("http://127.0.0.1:9000")
        ],
        prop::collection::btree_map("[a-z]{1,6}", arb_input(), 0..4),
        prop::collection::btree_set(0..index.max(1), 0..=index.min(3)),
        (1u32..=10, arb_duration(), arb_duration(), any::<bool>()),
        arb_duration(),
        any::<bool>(),
        prop::option::of((any::<bool>(), prop::option::of("[a-z]{1,10}"))),
    )
        .prop_map(
            move |(
                role,
                processor,
                inputs,
                deps,
                (attempts, a, b, jitter),
                timeout,
                cont,
                gate,
            )| {
                let mut inputs: Map<String, Value> = inputs.into_iter().collect();
                let deps: Vec<usize> = deps.into_iter().filter(|d| *d < index).collect();
                // Read an output of a direct ancestor when there is one.
                if let Some(&d) = deps.first() {
                    inputs.insert(
                        "from".into(),
                        Value::String(format!("${{steps.s{d}.outputs.out}}")),
                    );
                }
                Step {
                    id: format!("s{index}"),
                    role,
                    processor: ProcessorRef::parse(processor).unwrap(),
                    inputs,
                    depends_on: deps.into_iter().map(|d| format!("s{d}")).collect(),
                    retries: Retries {
                        max_attempts: attempts,
                        backoff_base: a.min(b),
                        backoff_cap: a.max(b),
                        jitter,
                    },
                    timeout: Some(timeout).filter(|t| t.as_millis() % 2 == 0),
                    on_failure: if cont {
                        OnFailure::Continue
                    } else {
                        OnFailure::Fail
                    },
                    gate: gate.map(|(approval, environment)| Gate {
                        approval,
                        environment,
                    }),
                }
            },
        )
}

fn arb_definition() -> impl Strategy<Value = Definition> {
    (1usize..6)
        .prop_flat_map(|n| {
            (
                prop::option::of("[ -~]{0,30}"),
                (0..n).map(arb_step).collect::<Vec<_>>(),
                prop::collection::vec(
                    (
                        prop_oneof![Just("*/5 * * * *"), Just("@daily"), Just("30 2 * * 1-5")],
                        prop_oneof![Just("UTC"), Just("Europe/Paris"), Just("Asia/Kolkata")],
                        prop::collection::btree_map("[a-z]{1,6}", arb_input(), 0..3),
                    ),
                    0..3,
                ),
            )
        })
        .prop_map(|(description, steps, triggers)| Definition {
            description,
            steps,
            triggers: triggers
                .into_iter()
                .map(|(cron, tz, inputs)| Trigger {
                    cron: crate::cron::Schedule::parse(cron, tz).unwrap(),
                    inputs: inputs.into_iter().collect(),
                })
                .collect(),
        })
}

/// Anchors and merge keys work; `yes`/`on` stay strings; one document only; no NaN.
#[test]
fn yaml_features_and_limits() {
    let def = yaml("steps:\n  - &base {id: a, role: r, processor: \"builtin:echo\", retries: &r {max_attempts: 3}}\n  - <<: *base\n    id: b\n    retries: *r\n    inputs: {flag: yes, env: no, on: on}\n").unwrap();
    assert_eq!(def.step("b").unwrap().role, "r");
    assert_eq!(def.step("b").unwrap().retries.max_attempts, 3);
    assert_eq!(
        Value::Object(def.step("b").unwrap().inputs.clone()),
        json!({"flag": "yes", "env": "no", "on": "on"})
    );
    let e = yaml_err("---\nsteps: []\n---\nsteps: []\n");
    assert_eq!((e.code, e.line), (codes::PARSE, Some(4)), "{e}");
    assert!(e.message.contains("one YAML document"), "{e}");
    let e = yaml_err(&format!("steps:\n{STEP_A}    inputs: {{x: .nan}}\n"));
    assert_eq!((e.code, e.line), (codes::PARSE, Some(5)), "{e}");
    assert_refused(
        "",
        codes::SCHEMA,
        None,
        Some(1),
        "must be a mapping, not null",
    );
}

// --- the documentation ------------------------------------------------------------------------

const DOC: &str = include_str!("../../../../docs/pipelines.md");

/// The fenced block that follows `<!-- example:<name> -->` in docs/pipelines.md.
fn doc_example(name: &str) -> &'static str {
    let marker = format!("<!-- example:{name} -->");
    let after = &DOC[DOC.find(&marker).expect("marker") + marker.len()..];
    let body = &after[after.find('\n').expect("fence") + 1..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    &body[..body.find("```").expect("closing fence")]
}

/// The YAML and JSON examples in docs/pipelines.md are valid and the same definition, and the
/// JSON is exactly what the definition serializes to.
#[test]
fn doc_examples_agree() {
    let from_yaml = parse(doc_example("yaml"), Format::Yaml).unwrap();
    let from_json = parse(doc_example("json"), Format::Json).unwrap();
    assert_eq!(from_yaml, from_json);
    let written: Value = serde_json::from_str(doc_example("json")).unwrap();
    assert_eq!(serde_json::to_value(&from_yaml).unwrap(), written);
}

/// Every error code is in the documentation's table.
#[test]
fn doc_lists_every_code() {
    for code in [
        codes::PARSE,
        codes::SCHEMA,
        codes::DUPLICATE_STEP,
        codes::UNKNOWN_STEP,
        codes::CYCLE,
        codes::RETRIES,
        codes::TIMEOUT,
        codes::PROCESSOR,
        codes::INPUT_REF,
        codes::CRON_INVALID,
        codes::TIMEZONE_INVALID,
    ] {
        assert!(
            DOC.contains(&format!("| `{code}` |")),
            "{code} is not documented"
        );
    }
}
