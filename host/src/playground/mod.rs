//! The playground page (docs/playground.md): plain HTML, CSS and JavaScript modules, no
//! framework and no build step, embedded in the binary so `pipehost serve` works offline and
//! building pipehost needs no JavaScript toolchain. The server serves them at `/` and
//! `/playground/{file}` ([`asset`]).

/// `(content type, bytes)` of a page file by name.
pub fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    let file = FILES.iter().find(|(n, _, _)| *n == name)?;
    Some((file.1, file.2))
}

const JS: &str = "text/javascript; charset=utf-8";

const FILES: &[(&str, &str, &[u8])] = &[
    ("index.html", "text/html; charset=utf-8", include_bytes!("index.html")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("style.css")),
    ("app.js", JS, include_bytes!("app.js")),
    ("api.js", JS, include_bytes!("api.js")),
    ("diff.js", JS, include_bytes!("diff.js")),
    ("experiments.js", JS, include_bytes!("experiments.js")),
    ("yaml.js", JS, include_bytes!("yaml.js")),
    ("favicon.svg", "image/svg+xml", include_bytes!("favicon.svg")),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_and_the_page_loads_only_its_own_scripts() {
        for (name, _, body) in FILES {
            assert!(!body.is_empty(), "{name} is empty");
            assert!(asset(name).is_some());
        }
        assert!(asset("../mod.rs").is_none());
        let html = std::str::from_utf8(asset("index.html").unwrap().1).unwrap();
        // Offline: nothing from the network.
        assert!(!html.contains("http://") && !html.contains("https://"), "the page links outside");
        for (name, ..) in FILES.iter().filter(|f| f.0.ends_with(".js")) {
            let js = std::str::from_utf8(asset(name).unwrap().1).unwrap();
            assert!(!js.contains("innerHTML"), "{name} uses innerHTML: output must go in as text");
        }
    }
}
