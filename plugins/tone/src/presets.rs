//! Named rule sets shipped inside the plugin, so a pipeline can say `presets: [zh-warm]`.
//!
//! Each preset targets stock, templated phrases that make Qwen sound stiff or like a form
//! letter. Removals (`to: ""`) include the trailing comma/space so the sentence still reads
//! well; leftmost-longest matching means the longer variant (with the comma) wins over a bare
//! one.

/// `(name, rules)` for every preset, in the order they are documented.
pub const PRESETS: &[(&str, &[(&str, &str)])] = &[("zh-warm", ZH_WARM), ("en-warm", EN_WARM)];

/// Chinese: drop the "as an AI" disclaimer, soften stock openers and closers.
const ZH_WARM: &[(&str, &str)] = &[
    // Disclaimers: the user knows they are talking to a model. Half- and full-width comma
    // variants, because this stage may run before or after punctuation fixing.
    ("作为一个AI语言模型，", ""),
    ("作为一个AI语言模型,", ""),
    ("作为一个 AI 语言模型，", ""),
    ("作为一个AI语言模型", ""),
    ("作为AI语言模型，", ""),
    ("作为一个人工智能语言模型，", ""),
    ("作为一个人工智能助手，", ""),
    ("作为一个AI助手，", ""),
    // Stock openers.
    ("这是一个很好的问题", "这个问题很有意思"),
    ("这是一个非常好的问题", "这个问题很有意思"),
    ("我很乐意为你提供帮助", "很高兴帮你"),
    ("你可以考虑", "不妨试试"),
    ("您可以考虑", "不妨试试"),
    // Essay-style connectives.
    ("总而言之，", "总之，"),
    ("综上所述，", "总的来说，"),
    ("值得注意的是，", "要留意的是，"),
    ("需要注意的是，", "要注意，"),
    // Stock closers.
    ("希望这对你有帮助", "希望能帮到你"),
    ("希望这对您有帮助", "希望能帮到你"),
    ("希望以上信息对你有所帮助", "希望能帮到你"),
    ("希望这些信息对你有所帮助", "希望能帮到你"),
    ("如果你还有其他问题，请随时告诉我", "还有什么想问的，随时找我"),
    ("如果您还有其他问题，请随时提问", "还有什么想问的，随时找我"),
    ("非常抱歉给您带来的不便", "抱歉给你添麻烦了"),
];

/// English: the same idea; phrases are case-sensitive unless `case_insensitive` is set.
const EN_WARM: &[(&str, &str)] = &[
    ("As an AI language model, ", ""),
    ("As an AI language model,", ""),
    ("As a large language model, ", ""),
    ("As an AI, ", ""),
    ("That's a great question", "Good question"),
    ("That is a great question", "Good question"),
    ("Certainly! ", "Sure! "),
    ("It's important to note that ", "Note that "),
    ("It is important to note that ", "Note that "),
    ("In conclusion, ", "So, "),
    ("delve into", "dig into"),
    ("I hope this helps!", "Hope that helps!"),
    ("I hope this helps.", "Hope that helps."),
    ("I hope this information is helpful.", "Hope that helps."),
    ("I apologize for any confusion.", "Sorry for the confusion."),
    ("I apologize for the inconvenience.", "Sorry about that."),
    ("Feel free to ask if you have any other questions.", "Anything else, just ask."),
    ("If you have any other questions, feel free to ask.", "Anything else, just ask."),
];

/// The rules of the preset called `name`.
pub fn get(name: &str) -> Option<&'static [(&'static str, &'static str)]> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, rules)| *rules)
}

/// Every preset name, for error messages.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}
