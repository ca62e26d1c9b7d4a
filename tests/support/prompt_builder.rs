//! The prompt-builder checks shared by the Python and JavaScript test guests.

use pipehost::plugin::{CallContext, Cause, Language, Limits, Message, PromptBuilder};

pub fn msg(role: &str, content: &str) -> Message {
    Message { role: role.into(), content: content.into() }
}

/// A test guest's SDK `PromptBuilder` (`tests/guests/prompt-py`, `prompt-js`: the same logic)
/// through the host: vars, history, context and config in, messages out (the guest tags the
/// system message with the stage), calls with different configs in a row (nothing survives a
/// call).
pub fn prompt_builder_builds_messages(
    p: &PromptBuilder,
    language: Language,
    ctx: &CallContext,
    limits: &Limits,
) {
    assert_eq!(p.meta().language, language);
    let tagged = |s: &str| format!("{s} [{}]", ctx.stage);
    let config = r#"{"system": "你是一位诗人。", "prefix": "Q: ", "max_history": 1}"#;
    p.validate_config(config, ctx, limits).unwrap();
    let vars =
        vec![("other".to_owned(), "x".to_owned()), ("question".to_owned(), "秋夜{{ 7*7 }}".to_owned())];
    let history = vec![msg("user", "早"), msg("assistant", "早安")];
    let messages = p.build(&vars, &history, ctx, config, limits).unwrap();
    assert_eq!(
        messages,
        [msg("system", &tagged("你是一位诗人。")), msg("assistant", "早安"), msg("user", "Q: 秋夜{{ 7*7 }}")]
    );
    // The defaults (no prefix, up to 10 history messages), then the first config again.
    let messages = p.build(&vars, &history, ctx, r#"{"system": "S"}"#, limits).unwrap();
    assert_eq!(
        messages,
        [
            msg("system", &tagged("S")),
            msg("user", "早"),
            msg("assistant", "早安"),
            msg("user", "秋夜{{ 7*7 }}")
        ]
    );
    let messages = p.build(&vars, &[], ctx, r#"{"system": "S", "max_history": 0}"#, limits).unwrap();
    assert_eq!(messages, [msg("system", &tagged("S")), msg("user", "秋夜{{ 7*7 }}")]);
    assert_eq!(p.build(&vars, &history, ctx, config, limits).unwrap().len(), 3);
}

/// The same guest's errors: a missing variable is the request's fault, a bad config the
/// config's, each naming what is wrong.
pub fn prompt_builder_errors_keep_their_kind(p: &PromptBuilder, ctx: &CallContext, limits: &Limits) {
    let vars = vec![("question".to_owned(), "hi".to_owned())];
    let err = p.build(&[], &[], ctx, r#"{"system": "S"}"#, limits).unwrap_err();
    assert!(matches!(err.cause, Cause::InvalidInput(ref m) if m.contains("question")), "{err}");
    for (config, field) in [
        ("{}", "system"),
        (r#"{"system": "S", "max_history": -1}"#, "max_history"),
        (r#"{"system": "S", "sytem": ""}"#, "sytem"),
    ] {
        let err = p.validate_config(config, ctx, limits).unwrap_err();
        assert!(matches!(err.cause, Cause::InvalidConfig(ref m) if m.contains(field)), "{config}: {err}");
        let err = p.build(&vars, &[], ctx, config, limits).unwrap_err();
        assert!(matches!(err.cause, Cause::InvalidConfig(ref m) if m.contains(field)), "{config}: {err}");
    }
}
