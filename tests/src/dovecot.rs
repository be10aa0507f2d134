//! A real Dovecot (POP3 only) in the server namespace, with its own config folder, passwd-file
//! users, Maildir storage, a self-signed certificate (STLS) and log files we can read.
//!
//! Longer than 600 lines: one job (starting, configuring, feeding and reading one Dovecot),
//! most of it the `Dovecot` methods the tests call; the message builders at the end are
//! the part to move out if it grows.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};

use crate::topology::{
    Node, ROUTER_SERVER_V4, ROUTER_SERVER_V6, SERVER_V4, SERVER_V6, Topology, server_pop3_v4,
};
use crate::util::{
    self, ChildGuard, DEFAULT_TIMEOUT, TempDir, chown, next_seq, read_lossy, run_cmd, set_mode,
    tail, wait_for,
};

/// uid and gid that own the test mailboxes. Dovecot refuses uid 0 for mail; the number needs no
/// /etc/passwd entry because the passwd-file gives it.
pub const MAIL_UID: u32 = 5000;
pub const MAIL_GID: u32 = 5000;

/// How long `start` waits for port 110 to answer with a greeting.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Users created by `DovecotOptions::default()`: (name, password).
pub const DEFAULT_USERS: &[(&str, &str)] = &[
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("carol", "carol-pw"),
    ("dave", "dave-pw"),
];

#[derive(Debug, Clone)]
pub struct DovecotOptions {
    /// (user, password). Passwords must not contain ':' or newlines.
    pub users: Vec<(String, String)>,
    /// Dovecot's performance settings instead of its secure defaults: pop3-login in its fast
    /// mode (`service_count = 0`, large `client_limit`, two pre-started processes) and pop3
    /// mail processes reused across sessions (`service_count = 1000`, four pre-started).
    /// Without them every session forks a login and a mail process (about 6-12 ms each here).
    pub fast_login: bool,
    /// `pop3_lock_session = yes`: a second concurrent session for a user gets
    /// `-ERR [IN-USE] ...` from Dovecot itself.
    pub lock_session: bool,
    /// `login_trusted_networks` = the router's server-facing addresses (default true). Dovecot
    /// then accepts XCLIENT from the router and greets it with `+OK [XCLIENT] Dovecot (Debian)
    /// ready.` instead of `+OK Dovecot (Debian) ready.` (XCLIENT is not listed in CAPA).
    pub trust_router: bool,
    /// APOP offered (`auth_mechanisms` with `apop`; the passwd-file holds plaintext
    /// passwords): the greeting then carries an APOP timestamp.
    pub apop: bool,
    /// STLS offered with a self-signed certificate (default true); `false` = `ssl = no`,
    /// so STLS is refused.
    pub tls: bool,
    /// Dovecot's `push_notification` plugin with its `ox` driver posting to this URL on
    /// every delivery through [`Dovecot::deliver_lda`], for users switched on with
    /// [`Dovecot::enable_push`].
    pub push_url: Option<String>,
    /// A master user (name, password) who logs in as any user with `user*name`
    /// (`auth_master_user_separator = *`; the login user must exist). Every session's
    /// log lines (the logout line among them) then name who authenticated:
    /// `auth=<name>` for the master user's, `auth=<user>` for the user's own.
    pub master_user: Option<(String, String)>,
    /// Appended verbatim to dovecot.conf (hooks for later tests).
    pub extra_config: String,
}

impl Default for DovecotOptions {
    fn default() -> Self {
        Self {
            users: DEFAULT_USERS
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            fast_login: false,
            lock_session: false,
            trust_router: true,
            apop: false,
            tls: true,
            push_url: None,
            master_user: None,
            extra_config: String::new(),
        }
    }
}

/// One `Login:` line of Dovecot's info log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecord {
    pub user: String,
    /// e.g. `PLAIN`, `LOGIN`
    pub method: String,
    /// The remote IP Dovecot attributes the session to (the client's, or the one given by
    /// XCLIENT from a trusted network).
    pub rip: String,
    /// Whether the session was TLS (Dovecot prints `TLS` in the line).
    pub tls: bool,
    pub line: String,
}

/// A running (or stopped) Dovecot. Stopped by pid on drop.
#[derive(Debug)]
pub struct Dovecot {
    ns: String,
    options: DovecotOptions,
    conf: PathBuf,
    users_file: PathBuf,
    log: PathBuf,
    info_log: PathBuf,
    stdout_log: PathBuf,
    child: Option<ChildGuard>,
    // Declared last: removed after the process is gone.
    dir: TempDir,
}

impl Dovecot {
    /// Default users, standard (high-security) login processes; started and ready.
    pub fn start(topo: &Topology) -> Result<Self> {
        Self::start_with(topo, DovecotOptions::default())
    }

    pub fn start_with(topo: &Topology, options: DovecotOptions) -> Result<Self> {
        let dir = TempDir::new(&format!("{}-dc{}", topo.prefix(), next_seq()))?;
        let d = dir.path().to_path_buf();
        let mut dc = Dovecot {
            ns: topo.ns(Node::Server).to_string(),
            conf: d.join("dovecot.conf"),
            users_file: d.join("users"),
            log: d.join("dovecot.log"),
            info_log: d.join("info.log"),
            stdout_log: d.join("stdout.log"),
            options,
            child: None,
            dir,
        };
        dc.write_files()?;
        dc.start_server()?;
        Ok(dc)
    }

    fn write_files(&mut self) -> Result<()> {
        let d = self.dir.path().to_path_buf();
        for sub in ["run", "state", "home"] {
            fs::create_dir_all(d.join(sub))?;
            set_mode(&d.join(sub), 0o755)?;
        }
        // Self-signed certificate for STLS.
        let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
        let mut cmd = Command::new("openssl");
        cmd.args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "3", "-subj", "/CN=mail.test.example"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert);
        run_cmd(&mut cmd, None, DEFAULT_TIMEOUT, &d)?
            .check("openssl req (install openssl: scripts/setup.sh)")?;
        set_mode(&key, 0o600)?;

        let users: Vec<(String, String)> = self.options.users.clone();
        for (u, _) in &users {
            self.make_mailbox(u)?;
        }
        self.write_users(&users)?;

        let mut c = String::new();
        let p = d.display();
        writeln!(
            c,
            "# Generated by pop3-interceptor-e2e; self-contained (no /etc/dovecot)."
        )?;
        writeln!(c, "base_dir = {p}/run")?;
        writeln!(c, "state_dir = {p}/state")?;
        writeln!(
            c,
            "instance_name = {}",
            self.dir.path().file_name().unwrap().to_string_lossy()
        )?;
        writeln!(c, "log_path = {}", self.log.display())?;
        writeln!(c, "info_log_path = {}", self.info_log.display())?;
        writeln!(c, "protocols = pop3")?;
        writeln!(c, "listen = {SERVER_V4}, {SERVER_V6}")?;
        if self.options.trust_router {
            writeln!(
                c,
                "login_trusted_networks = {ROUTER_SERVER_V4}/32 {ROUTER_SERVER_V6}/128"
            )?;
        }
        let apop = if self.options.apop { " apop" } else { "" };
        writeln!(c, "auth_mechanisms = plain login{apop}")?;
        writeln!(c, "disable_plaintext_auth = no")?;
        writeln!(c, "auth_verbose = yes")?;
        writeln!(c, "verbose_proctitle = yes")?;
        if self.options.tls {
            writeln!(c, "ssl = yes")?;
            writeln!(c, "ssl_cert = <{}", cert.display())?;
            writeln!(c, "ssl_key = <{}", key.display())?;
        } else {
            writeln!(c, "ssl = no")?;
        }
        writeln!(c, "pop3_uidl_format = %08Xu%08Xv")?;
        writeln!(
            c,
            "pop3_lock_session = {}",
            if self.options.lock_session {
                "yes"
            } else {
                "no"
            }
        )?;
        writeln!(c, "mail_location = maildir:~/Maildir")?;
        writeln!(c, "first_valid_uid = {MAIL_UID}")?;
        writeln!(c, "last_valid_uid = {MAIL_UID}")?;
        writeln!(c, "first_valid_gid = {MAIL_GID}")?;
        writeln!(c, "last_valid_gid = {MAIL_GID}")?;
        writeln!(
            c,
            "protocol pop3 {{\n  mail_max_userip_connections = 10000\n}}"
        )?;
        if let Some((name, password)) = &self.options.master_user {
            if password.contains([':', '\n']) || name.contains([':', '\n', '*']) {
                bail!("master user or password with ':', '*' or newline: {name}");
            }
            let masters = d.join("master-users");
            fs::write(&masters, format!("{name}:{{PLAIN}}{password}\n"))?;
            set_mode(&masters, 0o644)?;
            writeln!(c, "auth_master_user_separator = *")?;
            writeln!(
                c,
                "mail_log_prefix = \"%s(%u)<%{{pid}}><%{{session}}> auth=<%{{auth_user}}>: \""
            )?;
            writeln!(
                c,
                "passdb {{\n  driver = passwd-file\n  master = yes\n  args = scheme=PLAIN {}\n  \
                 result_success = continue\n}}",
                masters.display()
            )?;
        }
        let uf = self.users_file.display();
        writeln!(
            c,
            "passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {uf}\n}}"
        )?;
        writeln!(
            c,
            "userdb {{\n  driver = passwd-file\n  args = username_format=%u {uf}\n}}"
        )?;
        writeln!(c, "service pop3-login {{")?;
        writeln!(c, "  inet_listener pop3 {{\n    port = 110\n  }}")?;
        writeln!(c, "  inet_listener pop3s {{\n    port = 0\n  }}")?;
        if self.options.fast_login {
            writeln!(
                c,
                "  service_count = 0\n  client_limit = 4000\n  process_min_avail = 2"
            )?;
        }
        writeln!(c, "}}")?;
        writeln!(c, "service pop3 {{\n  process_limit = 2048")?;
        if self.options.fast_login {
            // Reuse mail processes across sessions (all users share one uid).
            writeln!(c, "  service_count = 1000\n  process_min_avail = 4")?;
        }
        writeln!(c, "}}")?;
        writeln!(c, "default_client_limit = 4000")?;
        if let Some(url) = &self.options.push_url {
            writeln!(c, "mail_attribute_dict = file:%h/dovecot-attributes")?;
            writeln!(
                c,
                "protocol lda {{\n  mail_plugins = $mail_plugins notify push_notification\n}}"
            )?;
            writeln!(
                c,
                "plugin {{\n  push_notification_driver = ox:url={url}\n}}"
            )?;
        }
        c.push_str(&self.options.extra_config);
        c.push('\n');
        fs::write(&self.conf, c)?;
        Ok(())
    }

    fn make_mailbox(&self, user: &str) -> Result<()> {
        let home = self.home(user);
        let md = home.join("Maildir");
        for p in [
            home.clone(),
            md.clone(),
            md.join("cur"),
            md.join("new"),
            md.join("tmp"),
        ] {
            fs::create_dir_all(&p)?;
            set_mode(&p, 0o700)?;
            chown(&p, MAIL_UID, MAIL_GID)?;
        }
        Ok(())
    }

    fn write_users(&self, users: &[(String, String)]) -> Result<()> {
        let mut s = String::new();
        for (u, pw) in users {
            if pw.contains([':', '\n']) || u.contains([':', '\n']) {
                bail!("user or password with ':' or newline: {u}");
            }
            writeln!(
                s,
                "{u}:{{PLAIN}}{pw}:{MAIL_UID}:{MAIL_GID}::{}::",
                self.home(u).display()
            )?;
        }
        // Dovecot's passwd-file driver re-reads the file when its mtime (seconds) or size
        // changed, checking at most once per second. So: give the new file an mtime at least
        // one second after the old one, replace it atomically, and let a second pass.
        let prev = fs::metadata(&self.users_file)
            .and_then(|m| m.modified())
            .ok();
        let tmp = self.users_file.with_extension("tmp");
        fs::write(&tmp, s)?;
        set_mode(&tmp, 0o644)?;
        if let Some(prev) = prev {
            let now = SystemTime::now();
            let at_least = prev + Duration::from_secs(1);
            let f = fs::File::options().write(true).open(&tmp)?;
            f.set_modified(if now > at_least { now } else { at_least })?;
        }
        fs::rename(&tmp, &self.users_file)?;
        if prev.is_some() {
            std::thread::sleep(Duration::from_millis(1100));
        }
        Ok(())
    }

    fn start_server(&mut self) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "dovecot", "-F", "-c"])
            .arg(&self.conf);
        util::scrub_env(&mut cmd);
        let guard = crate::topology::spawn_logged(&mut cmd, &self.stdout_log, "dovecot")?;
        self.child = Some(guard);
        self.wait_ready(START_TIMEOUT)
    }

    /// Waits until port 110 on 203.0.113.2 answers `+OK` from inside the server namespace.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let ns = self.ns.clone();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(st) = c.try_wait()
            {
                bail!(
                    "dovecot exited ({st}) during start:\n{}\n{}",
                    tail(&self.stdout_log, 20),
                    tail(&self.log, 20)
                );
            }
            if greeting_ok(&ns, server_pop3_v4()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "dovecot not answering on port 110 after {timeout:?}:\n{}\n{}",
                    tail(&self.stdout_log, 20),
                    tail(&self.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGTERM to the master, by pid; SIGKILL after 10 s) and waits until port
    /// 110 refuses connections. Mailboxes, users and logs stay.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(10));
        }
        let ns = self.ns.clone();
        wait_for(
            "dovecot port 110 to close",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || (!port_open(&ns, server_pop3_v4())).then_some(()),
        )
    }

    /// Starts the server again after [`stop`](Self::stop).
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.stop()?;
        }
        self.start_server()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// The master's pid (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.pid()).unwrap_or(0)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> &Path {
        &self.conf
    }
    /// Error log (`log_path`).
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    /// Info log (`info_log_path`): the `Login:` lines.
    pub fn info_log_path(&self) -> &Path {
        &self.info_log
    }
    pub fn users(&self) -> &[(String, String)] {
        &self.options.users
    }
    pub fn password(&self, user: &str) -> Option<&str> {
        self.options
            .users
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, p)| p.as_str())
    }
    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join("home").join(user)
    }
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.home(user).join("Maildir")
    }

    /// Changes a user's password by rewriting the passwd-file. Takes about 1.1 s: Dovecot
    /// notices a changed passwd-file at most once per second.
    pub fn set_password(&mut self, user: &str, password: &str) -> Result<()> {
        match self.options.users.iter_mut().find(|(u, _)| u == user) {
            Some(e) => e.1 = password.to_string(),
            None => bail!("no such user {user}"),
        }
        let users = self.options.users.clone();
        self.write_users(&users)
    }

    /// Adds a user with an empty mailbox (about 1.1 s, like [`set_password`](Self::set_password)).
    pub fn add_user(&mut self, user: &str, password: &str) -> Result<()> {
        if self.password(user).is_some() {
            return self.set_password(user, password);
        }
        self.make_mailbox(user)?;
        self.options
            .users
            .push((user.to_string(), password.to_string()));
        let users = self.options.users.clone();
        self.write_users(&users)
    }

    /// Delivers a message (RFC 5322 bytes, LF or CRLF line ends) into the user's Maildir/new,
    /// the way an MDA does (write in tmp, rename into new). Returns the file's path.
    pub fn deliver(&self, user: &str, message: &[u8]) -> Result<PathBuf> {
        let md = self.maildir(user);
        if !md.exists() {
            bail!("no mailbox for {user}");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!(
            "{}.M{}P{}Q{}.p3i-e2e",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            next_seq()
        );
        let tmp = md.join("tmp").join(&name);
        let mut f = fs::File::create(&tmp)?;
        f.write_all(message)?;
        f.sync_all()?;
        drop(f);
        set_mode(&tmp, 0o600)?;
        chown(&tmp, MAIL_UID, MAIL_GID)?;
        let dst = md.join("new").join(&name);
        fs::rename(&tmp, &dst)?;
        Ok(dst)
    }

    /// Delivers through `dovecot-lda` in the server namespace, as an MTA would: Dovecot's
    /// own plugins (push_notification) see the delivery.
    pub fn deliver_lda(&self, topo: &Topology, user: &str, message: &[u8]) -> Result<()> {
        let conf = self.conf.display().to_string();
        topo.exec_with(
            Node::Server,
            &["/usr/lib/dovecot/dovecot-lda", "-c", &conf, "-d", user],
            Some(message),
            DEFAULT_TIMEOUT,
        )?
        .check("dovecot-lda")?;
        Ok(())
    }

    /// Switches the ox push driver on for `user` (its INBOX METADATA, as OX App Suite
    /// would set it).
    pub fn enable_push(&self, topo: &Topology, user: &str) -> Result<()> {
        let conf = self.conf.display().to_string();
        let value = format!("user={user}");
        topo.exec_with(
            Node::Server,
            &[
                "doveadm",
                "-c",
                &conf,
                "mailbox",
                "metadata",
                "set",
                "-u",
                user,
                "-s",
                "",
                "/private/vendor/vendor.dovecot/http-notify",
                &value,
            ],
            None,
            DEFAULT_TIMEOUT,
        )?
        .check("doveadm mailbox metadata set")?;
        Ok(())
    }

    /// Number of messages in the user's mailbox (files in new/ and cur/).
    pub fn message_count(&self, user: &str) -> usize {
        ["new", "cur"]
            .iter()
            .map(|d| {
                fs::read_dir(self.maildir(user).join(d))
                    .map(|r| r.count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Every `Login:` line of the info log, in order.
    pub fn logins(&self) -> Vec<LoginRecord> {
        read_lossy(&self.info_log)
            .lines()
            .filter_map(parse_login)
            .collect()
    }

    /// `Login:` lines for one user.
    pub fn logins_for(&self, user: &str) -> Vec<LoginRecord> {
        self.logins()
            .into_iter()
            .filter(|l| l.user == user)
            .collect()
    }

    /// How many times `user` logged in (successfully) so far.
    pub fn login_count(&self, user: &str) -> usize {
        self.logins_for(user).len()
    }

    /// Waits until `user` has at least `n` logins in the log (Dovecot's log process writes
    /// asynchronously); returns the count seen.
    pub fn wait_login_count(&self, user: &str, n: usize, timeout: Duration) -> Result<usize> {
        wait_for(
            &format!("{n} logins of {user}"),
            timeout,
            Duration::from_millis(20),
            || {
                let c = self.login_count(user);
                (c >= n).then_some(c)
            },
        )
    }

    /// Lines of the info and error logs that contain `needle`.
    pub fn log_lines_matching(&self, needle: &str) -> Vec<String> {
        let mut v = Vec::new();
        for p in [&self.info_log, &self.log] {
            v.extend(
                read_lossy(p)
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_string),
            );
        }
        v
    }

    /// Info + error log text (for diagnostics).
    pub fn log_text(&self) -> String {
        format!("{}{}", read_lossy(&self.info_log), read_lossy(&self.log))
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- dovecot log ({}) ---\n{}\n{}",
                self.dir.path().display(),
                tail(&self.info_log, 30),
                tail(&self.log, 30)
            );
        }
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(5));
        }
    }
}

fn parse_login(line: &str) -> Option<LoginRecord> {
    let i = line.find("Login: user=<")?;
    let rest = &line[i + "Login: user=<".len()..];
    let user = rest[..rest.find('>')?].to_string();
    let field = |name: &str| -> String {
        line.find(name)
            .map(|j| {
                let v = &line[j + name.len()..];
                v[..v.find([',', ' ']).unwrap_or(v.len())].to_string()
            })
            .unwrap_or_default()
    };
    Some(LoginRecord {
        user,
        method: field("method="),
        rip: field("rip="),
        tls: line.contains(", TLS"),
        line: line.to_string(),
    })
}

fn port_open(ns: &str, addr: SocketAddr) -> bool {
    crate::topology::in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
    })
    .unwrap_or(false)
}

fn greeting_ok(ns: &str, addr: SocketAddr) -> bool {
    let Ok(Ok(s)) = crate::topology::in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(300))
    }) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let mut r = BufReader::new(&s);
    let ok = r.read_line(&mut line).is_ok() && line.starts_with("+OK");
    if ok {
        let _ = (&s).write_all(b"QUIT\r\n");
        let mut bye = String::new();
        let _ = r.read_line(&mut bye);
    }
    ok
}

/// A simple RFC 5322 message with LF line ends.
pub fn make_message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\nTo: {to}\nSubject: {subject}\nDate: Thu, 01 Jan 2026 00:00:00 +0000\n\
         Message-ID: <{}.{}@p3i.test.example>\n\n{body}\n",
        std::process::id(),
        next_seq()
    )
    .into_bytes()
}

/// A message of about `size` bytes whose body has 76-character lines, some starting with '.'
/// (to exercise dot-stuffing) and a few 998-character lines.
pub fn make_large_message(to: &str, size: usize) -> Vec<u8> {
    let mut m = make_message("bulk@p3i.test.example", to, "large", "start");
    let mut i = 0u64;
    while m.len() < size {
        let line = match i % 50 {
            7 => format!(".dot-stuffed line {i}"),
            13 => ".".to_string(),
            29 => "x".repeat(998),
            _ => format!(
                "{i:08} {}",
                "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
            ),
        };
        m.extend_from_slice(line.as_bytes());
        m.push(b'\n');
        i += 1;
    }
    m
}
