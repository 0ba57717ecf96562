//! A real headless Chromium driven over WebDriver (`chromedriver` on an
//! ephemeral loopback port, spoken to with plain HTTP): enough of the
//! protocol to load a page, click, type, read text, run a script, switch
//! into frames, take screenshots and read the browser's console.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::support::client;

/// The WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian puts the browser and its driver.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A Chromium session; the driver (and the browser) end on drop.
pub(crate) struct Browser {
    driver: Child,
    base: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of
    /// `width` × `height` CSS pixels, logging the console.
    pub(crate) fn start(width: u32, height: u32) -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: run `bash tests/run.sh` (it installs it) or `apt-get install -y {package}`"
            );
        }
        let mut driver = Command::new(CHROMEDRIVER)
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        // "ChromeDriver was started successfully on port 36905."
        let stdout = driver.stdout.take().expect("chromedriver's stdout");
        let (found, port) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let _ = found.send(digits.parse::<u16>().ok());
                }
            }
        });
        let port = match port.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(port)) => port,
            _ => {
                let _ = driver.kill();
                panic!("chromedriver did not say which port it listens on");
            }
        };
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
        };
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--window-size={width},{height}"),
        ];
        let session = browser.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
                "goog:loggingPrefs": {"browser": "ALL"},
                "timeouts": {"script": 30_000, "pageLoad": 30_000, "implicit": 0},
            }}})),
        );
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"))
            .to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    /// One WebDriver command; returns its `value`, panics on an error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let agent = client();
        let result = match method {
            "POST" => agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
            "DELETE" => agent.delete(&url).call(),
            _ => agent.get(&url).call(),
        };
        let mut response = result.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("WebDriver {method} {path} answered {status} non-JSON ({e}): {text}")
        });
        assert!(
            status < 400,
            "WebDriver {method} {path} failed with {status}: {}",
            value["value"]
        );
        value["value"].clone()
    }

    /// Opens `url` and waits for its load event.
    pub(crate) fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The current URL.
    pub(crate) fn url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns.
    pub(crate) fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// The first element matching `css`, if any.
    pub(crate) fn find(&self, css: &str) -> Option<Value> {
        let found = self.call(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found.as_array().and_then(|all| all.first().cloned())
    }

    /// Waits up to `limit` for `condition` (a script returning a truthy
    /// value once the page is ready); returns its last value.
    pub(crate) fn wait_for(&self, what: &str, limit: Duration, condition: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.execute(condition, vec![]);
            let ready = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
                _ => true,
            };
            if ready {
                return value;
            }
            assert!(
                started.elapsed() < limit,
                "{what}: not within {limit:?}; the page says:\n{}",
                self.execute("return document.body.innerText", vec![])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Clicks the element matching `css` as a user would.
    pub(crate) fn click(&self, css: &str) {
        let element = self
            .find(css)
            .unwrap_or_else(|| panic!("nothing matches {css}"));
        let id = element[ELEMENT].as_str().unwrap_or_default();
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Types `text` into the element matching `css`.
    pub(crate) fn type_into(&self, css: &str, text: &str) {
        let element = self
            .find(css)
            .unwrap_or_else(|| panic!("nothing matches {css}"));
        let id = element[ELEMENT].as_str().unwrap_or_default();
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Moves into the frame matching `css`; [`Browser::leave_frame`] comes
    /// back.
    pub(crate) fn enter_frame(&self, css: &str) {
        let element = self
            .find(css)
            .unwrap_or_else(|| panic!("nothing matches {css}"));
        self.call("POST", "/frame", Some(json!({ "id": element })));
    }

    /// Back to the top-level page.
    pub(crate) fn leave_frame(&self) {
        self.call("POST", "/frame", Some(json!({ "id": null })));
    }

    /// The source of the current document (or frame).
    pub(crate) fn source(&self) -> String {
        self.call("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The source of the document in the frame matching `css`.
    pub(crate) fn frame_source(&self, css: &str) -> String {
        self.enter_frame(css);
        let source = self.source();
        self.leave_frame();
        source
    }

    /// Resizes the window (CSS pixels).
    pub(crate) fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// A PNG of the whole page at `width` CSS pixels (the window grows
    /// to the page's height for it) at `path`.
    pub(crate) fn screenshot(&self, path: &Path, width: u32) {
        use base64::Engine as _;
        self.resize(width, 900);
        let size = self.execute(
            "return [window.outerHeight - window.innerHeight, document.documentElement.scrollHeight]",
            vec![],
        );
        let chrome = size[0].as_u64().unwrap_or(0) as u32;
        let page = size[1].as_u64().unwrap_or(900) as u32;
        self.resize(width, page.clamp(600, 8000) + chrome);
        let encoded = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("WebDriver screenshots are base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Console messages of level SEVERE (errors) since the last call.
    pub(crate) fn console_errors(&self) -> Vec<String> {
        self.call("POST", "/se/log", Some(json!({ "type": "browser" })))
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (and the browser), then the driver.
        let _ = client().delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
