use super::*;
use pipehost_plugin_sdk::testing::{assert_stream_matches_whole, run_stream};

fn fix_with(text: &str, json: &str) -> String {
    let config = Punctuation::config(json).expect("config");
    let whole = Punctuation::process(text, &config, &Context::default()).expect("process");
    // Every example doubles as a streaming check.
    for chunks in [&[1][..], &[2, 3], &[7]] {
        let (streamed, _) = run_stream::<Punctuation>(text, json, chunks).unwrap();
        assert_eq!(streamed, whole, "stream {chunks:?} on {text:?}");
    }
    whole
}

fn fix(text: &str) -> String {
    fix_with(text, "{}")
}

fn config_err(config: &str) -> String {
    match Punctuation::config(config) {
        Err(PluginError::InvalidConfig(m)) => m,
        other => panic!("expected InvalidConfig for {config}, got {other:?}"),
    }
}

#[track_caller]
fn check(cases: &[(&str, &str)]) {
    for (input, want) in cases {
        assert_eq!(fix(input), *want, "input {input:?}");
    }
}

#[test]
fn chinese_punctuation() {
    check(&[
        ("你好,这是一个句子.", "你好，这是一个句子。"),
        ("蚂蚁集团上市后有多大的上涨空间?", "蚂蚁集团上市后有多大的上涨空间？"),
        ("注意:明天开会;不要迟到!", "注意：明天开会；不要迟到！"),
        ("刚刚买了一部iPhone,好开心!", "刚刚买了一部 iPhone，好开心！"),
        ("你用过React?", "你用过 React？"),
        ("我说Hello, world!", "我说 Hello, world！"),
        ("我们用Redis, MySQL和MongoDB.", "我们用 Redis, MySQL 和 MongoDB。"),
        ("**注意**:在Windows 10上,路径是/.", "**注意**：在 Windows 10 上，路径是/。"),
        ("2024年3月15日,OpenAI发布了GPT-4.5模型.", "2024 年 3 月 15 日，OpenAI 发布了 GPT-4.5 模型。"),
        ("温度为25°C,湿度60%.", "温度为 25°C，湿度 60%。"),
        ("- 项目A: 完成\n- 项目B: 进行中", "- 项目 A：完成\n- 项目 B：进行中"),
    ]);
}

#[test]
fn chinese_keeps_numbers_urls_tokens() {
    check(&[
        ("圆周率是3.14,对吗?", "圆周率是 3.14，对吗？"),
        ("一共1,000元.", "一共 1,000 元。"),
        ("会议在10:30开始.", "会议在 10:30 开始。"),
        ("我用Node.js开发.", "我用 Node.js 开发。"),
        ("请访问https://example.com/a.b?x=1,然后登录.", "请访问 https://example.com/a.b?x=1，然后登录。"),
        ("联系me@example.com.", "联系 me@example.com。"),
        ("例如e.g.这个", "例如 e.g. 这个"),
        ("他来自U.S.,现在在北京.", "他来自 U.S.，现在在北京。"),
        ("用.NET开发", "用 .NET 开发"),
        ("调用print(x)函数", "调用 print(x) 函数"),
        ("版本是v1.2.3.", "版本是 v1.2.3。"),
    ]);
}

#[test]
fn chinese_parentheses() {
    check(&[
        ("阿里巴巴(BABA.N)旗下", "阿里巴巴（BABA.N）旗下"),
        (
            "至少理解一种框架(如Backbone.js、AngularJS等)的开发者.",
            "至少理解一种框架（如 Backbone.js、AngularJS 等）的开发者。",
        ),
        ("蚂蚁集团 (Ant Group) 是", "蚂蚁集团（Ant Group）是"),
    ]);
}

#[test]
fn chinese_quotes() {
    check(&[
        ("他说:\"你好\".", "他说：“你好”。"),
        ("他说\"Hello\"就走了", "他说“Hello”就走了"),
        ("'引号'里的字", "‘引号’里的字"),
        ("我觉得I'm fine就好", "我觉得 I'm fine 就好"),
        // An open quote carries across sentences and pairs with the right close.
        ("他说:\"第一句.第二句!\"然后\"走了\".", "他说：“第一句。第二句！”然后“走了”。"),
    ]);
}

#[test]
fn quote_state_crosses_lines_not_paragraphs() {
    assert_eq!(fix("他说:\"第一行\n第二行\"结束"), "他说：“第一行\n第二行”结束");
    // A stray quote does not flip the quotes of the next paragraph.
    assert_eq!(fix("错误\"引号\n\n新段落\"好\"的"), "错误“引号\n\n新段落“好”的");
}

#[test]
fn chinese_ellipsis_and_repeats() {
    check(&[
        ("等一下...", "等一下……"),
        ("等一下。。。好吧", "等一下……好吧"),
        ("等一下…好吧", "等一下……好吧"),
        ("真的吗？？？", "真的吗？"),
        ("太好了!!!", "太好了！"),
        ("真的?!", "真的？！"),
        ("从1..10", "从 1..10"),
    ]);
    assert_eq!(fix_with("太好了!!!", r#"{"max_repeat": 2}"#), "太好了！！");
    assert_eq!(fix_with("太好了!!!", r#"{"collapse_repeats": false}"#), "太好了！！！");
}

#[test]
fn chinese_spacing() {
    check(&[
        ("在LeanCloud上,数据存储是围绕AVObject进行的.", "在 LeanCloud 上，数据存储是围绕 AVObject 进行的。"),
        ("共10个", "共 10 个"),
        ("增长了10%的收入", "增长了 10% 的收入"),
        ("在  LeanCloud   上", "在 LeanCloud 上"),
        ("你好 , 世界 。", "你好，世界。"),
        ("你好。 我是Qwen。", "你好。我是 Qwen。"),
        ("使用`cargo build`命令", "使用 `cargo build` 命令"),
        ("请看“文档” 的说明", "请看“文档”的说明"),
    ]);
    assert_eq!(fix_with("共10个", r#"{"cjk_latin_space": false}"#), "共10个");
}

#[test]
fn english_fixes() {
    check(&[
        ("Hello，world。", "Hello, world."),
        ("Really？Yes！", "Really? Yes!"),
        ("Hello,world.", "Hello, world."),
        ("Hello , world !", "Hello, world!"),
        ("It has 2.1 million people ,roughly.", "It has 2.1 million people, roughly."),
        (
            "Sure!Here is the answer:the capital is Paris.It is big.",
            "Sure! Here is the answer: the capital is Paris. It is big.",
        ),
        ("Note:this is it.", "Note: this is it."),
        ("It ends here.Then more.", "It ends here. Then more."),
        ("Two  spaces   here.", "Two spaces here."),
        ("Pi is 3.14, and 1,000 is big.", "Pi is 3.14, and 1,000 is big."),
        ("Meet at 10:30, e.g. tomorrow.", "Meet at 10:30, e.g. tomorrow."),
        ("The U.S. economy grew.", "The U.S. economy grew."),
        ("I use Node.js and ASP.NET daily.", "I use Node.js and ASP.NET daily."),
        ("See https://example.com/a,b.html for more.", "See https://example.com/a,b.html for more."),
        ("See https://example.com/a.html.", "See https://example.com/a.html."),
        ("He said “hi” to me.", "He said \"hi\" to me."),
        ("Wait……what?", "Wait...what?"),
        ("Wow!!!", "Wow!"),
        ("We use .NET here.", "We use .NET here."),
        ("Smile :) ok", "Smile :) ok"),
        ("std::vector is fine.", "std::vector is fine."),
        ("I don't know, it's fine.", "I don't know, it's fine."),
    ]);
}

#[test]
fn locale_per_sentence_in_auto() {
    assert_eq!(
        fix("This is English, ok? 这是中文,对吧? Back to English,right."),
        "This is English, ok? 这是中文，对吧？Back to English, right."
    );
    assert_eq!(fix("I went to 北京 yesterday, it was fun."), "I went to 北京 yesterday, it was fun.");
}

#[test]
fn fixed_locale() {
    assert_eq!(fix_with("Hello,world.", r#"{"locale": "zh"}"#), "Hello,world。");
    assert_eq!(fix_with("你好,世界.", r#"{"locale": "en"}"#), "你好, 世界.");
}

#[test]
fn markdown_is_respected() {
    let text = "步骤如下:\n\n1. 安装依赖.\n2) 运行`npm run build`.\n- 注意:别忘了\n\n```rust\nfn main() { println!(\"hi, {}\", x); }\n```\n\n查看[文档](https://a.com/x_(y).html)了解更多.";
    let want = "步骤如下：\n\n1. 安装依赖。\n2) 运行 `npm run build`。\n- 注意：别忘了\n\n```rust\nfn main() { println!(\"hi, {}\", x); }\n```\n\n查看[文档](https://a.com/x_(y).html)了解更多。";
    assert_eq!(fix(text), want);
    // Indentation and Markdown hard breaks (two trailing spaces) stay.
    assert_eq!(fix("    缩进的行,好.  \n下一行"), "    缩进的行，好。  \n下一行");
    // An unclosed fence keeps the rest verbatim.
    assert_eq!(fix("```\na,b.\n你好,"), "```\na,b.\n你好,");
}

#[test]
fn no_nfkc() {
    // Full-width letters/digits and ligatures are not normalised.
    assert_eq!(fix("ＡＢＣ１２３ﬁ"), "ＡＢＣ１２３ﬁ");
}

#[test]
fn empty_and_whitespace() {
    check(&[("", ""), ("\n", "\n"), ("  \n\n  ", "  \n\n  ")]);
}

#[test]
fn bad_config_names_the_field() {
    let m = config_err(r#"{"max_repeat": 0}"#);
    assert!(m.contains("max_repeat"), "{m}");
    let m = config_err(r#"{"max_repeat": -1}"#);
    assert!(m.contains("max_repeat"), "{m}");
    let m = config_err(r#"{"locale": "fr"}"#);
    assert!(m.contains("locale") && m.contains("fr"), "{m}");
    let m = config_err(r#"{"local": "zh"}"#);
    assert!(m.contains("local"), "{m}");
    let m = config_err(r#"{"quotes": "yes"}"#);
    assert!(m.contains("quotes"), "{m}");
    assert!(matches!(
        run_stream::<Punctuation>("x", r#"{"max_repeat": 0}"#, &[1]),
        Err(PluginError::InvalidConfig(_))
    ));
}

#[test]
fn streams_incrementally() {
    let mut s = Punctuation::open(Config::default(), Context::default()).unwrap();
    assert_eq!(s.push("你好,世界.").unwrap().emit, ""); // the "." may become "..." or "3.14"
    assert_eq!(s.push("我是").unwrap().emit, "你好，世界。");
    assert_eq!(s.push("Qwen.\n").unwrap().emit, "我是 Qwen。\n");
    assert_eq!(s.push("第二行").unwrap().emit, "");
    assert_eq!(s.finish().unwrap(), "第二行");
}

#[test]
fn stream_matches_whole_examples() {
    let texts = [
        "他说:\"第一句.第二句!\"然后\"走了\".\n\n```\ncode, here.\n```\n1. 列表项...\nHello,world.  Two",
        "See https://example.com/a. 然后访问www.example.org!!! 结束……\n`a.b` 和 ``x ` y``.",
        "  \t缩进 (括号(嵌套)) 'quote' don't 3.14, 1,000 10:30 e.g. U.S.A 你好。 ",
    ];
    for text in texts {
        for config in [r#"{}"#, r#"{"locale": "zh", "max_repeat": 2}"#, r#"{"locale": "en"}"#] {
            for chunks in [&[1][..], &[2], &[3, 1], &[5, 2, 7], &[1000]] {
                assert_stream_matches_whole::<Punctuation>(text, config, chunks);
            }
        }
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "你好",
            "世界",
            "LeanCloud",
            "Hello",
            "world",
            "the",
            "3.14",
            "1,000",
            "10:30",
            "e.g.",
            "U.S.",
            "Dr.",
            "Node.js",
            ".NET",
            "f(x)",
            "https://a.b/c?x=1",
            "me@example.com",
            ",",
            ".",
            "!",
            "?",
            ":",
            ";",
            "(",
            ")",
            "\"",
            "'",
            "don't",
            "...",
            "。",
            "，",
            "！",
            "……",
            "“",
            "”",
            "`",
            "``",
            "```",
            "~~~",
            "1. ",
            "- ",
            " ",
            "  ",
            "\t",
            "\n",
            "\n\n",
            "](x.y)",
            "[",
            "A",
            "中",
        ]);
        prop::collection::vec(atoms, 0..60).prop_map(|v| v.concat())
    }

    fn config() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "{}",
            r#"{"locale": "zh", "max_repeat": 2}"#,
            r#"{"locale": "en"}"#,
            r#"{"cjk_latin_space": false, "quotes": false, "collapse_repeats": false}"#,
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        // The stream resumes its scan where the last chunk left it; for any chunking it must
        // still cut the same segments as the whole-text path.
        #[test]
        fn stream_equals_whole(text in text(), config in config(), sizes in prop::collection::vec(1usize..9, 1..4)) {
            assert_stream_matches_whole::<Punctuation>(&text, config, &sizes);
        }
    }
}
