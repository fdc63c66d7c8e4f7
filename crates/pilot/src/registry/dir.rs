//! `skiffd --config-dir DIR`: ordinary Kubernetes manifests in a directory (recursively: `.yaml`,
//! `.yml`, `.json`; hidden entries skipped), watched with inotify and re-checked every poll
//! interval as a safety net (a file system without inotify, a missed event). A resource that fails to parse
//! or validate is reported (file, document, object, field) and its last good version stays in
//! force until it is fixed, while the file's other resources still apply; a file that is not
//! YAML at all keeps all its last good objects. When two files define the same object, the first
//! path in sorted order wins.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::{Event, Source};
use crate::model::{parse_documents, DocError, Key, Object};

/// Identity of a file's content as cheap metadata: changed ⇒ re-read.
type Stamp = (Option<SystemTime>, u64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len(), m.ino()))
}

struct FileState {
    stamp: Stamp,
    /// The last good parse of this file.
    objects: Vec<Arc<Object>>,
    problem: Option<String>,
    /// The objects of each document text that parsed cleanly last time: a change to one
    /// document of a big file re-parses that document only, and the others keep their `Arc`s
    /// (so the merge below sees them unchanged without comparing them).
    documents: HashMap<String, Vec<Arc<Object>>>,
}

/// Splits a manifest file at its `---` lines. `None` when the file uses YAML syntax a line split
/// could get wrong (content after `---`, `...` document ends, `%` directives): parse it whole.
fn split_documents(text: &str) -> Option<Vec<&str>> {
    let mut docs = Vec::new();
    let (mut start, mut offset) = (0, 0);
    for line in text.split_inclusive('\n') {
        let l = line.trim_end();
        if l == "---" {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        } else if l.starts_with("---") || l.starts_with("...") || l.starts_with('%') {
            return None;
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    Some(docs)
}

/// [`parse_documents`] with a per-document cache. Only documents whose text changed are
/// parsed; if any of them fails, the whole file is parsed again so errors carry the document's
/// index in the file, exactly as without the cache.
fn parse_cached(
    file: &Path,
    text: &str,
    cache: &mut HashMap<String, Vec<Arc<Object>>>,
) -> Vec<Result<Arc<Object>, DocError>> {
    let parse_whole = |text: &str| -> Vec<Result<Arc<Object>, DocError>> {
        parse_documents(file, text)
            .into_iter()
            .map(|r| r.map(Arc::new))
            .collect()
    };
    let Some(docs) = split_documents(text) else {
        cache.clear();
        return parse_whole(text);
    };
    let mut next: HashMap<String, Vec<Arc<Object>>> = HashMap::with_capacity(docs.len());
    let mut out = Vec::new();
    for doc in docs {
        // The cached text is moved over, not copied: a big file's unchanged documents cost a
        // hash lookup each.
        let (text_key, objects) = match cache.remove_entry(doc) {
            Some(hit) => hit,
            None => match next.get(doc) {
                Some(objects) => (doc.to_owned(), objects.clone()),
                None => {
                    let mut objects = Vec::new();
                    for r in parse_documents(file, doc) {
                        match r {
                            Ok(o) => objects.push(Arc::new(o)),
                            Err(_) => {
                                cache.clear();
                                return parse_whole(text);
                            }
                        }
                    }
                    (doc.to_owned(), objects)
                }
            },
        };
        out.extend(objects.iter().cloned().map(Ok));
        next.insert(text_key, objects);
    }
    *cache = next;
    out
}

/// A re-read or removed file's objects: before, after.
type Touched = (Vec<Arc<Object>>, Vec<Arc<Object>>);

/// A directory of manifests as a registry source.
pub struct ConfigDir {
    dir: PathBuf,
    interval: Duration,
    files: BTreeMap<PathBuf, FileState>,
    merged: BTreeMap<Key, Arc<Object>>,
    /// Duplicate definitions currently ignored, reported as problems of the later file.
    duplicates: BTreeMap<PathBuf, String>,
}

/// A file's new objects from its documents: the good ones, plus — for an object whose new
/// version is refused — its last good version, so one bad resource does not take the file's
/// others down with it. A document that cannot be tied to an object (broken YAML, no kind or
/// name) fails the file as a whole: its last good objects all stay. `Ok` carries the problem too.
fn merge_documents(
    old: &[Arc<Object>],
    docs: Vec<Result<Arc<Object>, DocError>>,
) -> Result<(Vec<Arc<Object>>, Option<String>), String> {
    let mut good = Vec::new();
    let mut errors: Vec<DocError> = Vec::new();
    for d in docs {
        match d {
            Ok(o) => good.push(o),
            Err(e) => errors.push(e),
        }
    }
    let text = |errors: &[DocError]| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    if errors.iter().any(|e| e.key.is_none()) {
        return Err(text(&errors));
    }
    for e in &errors {
        if let Some(prev) = old.iter().find(|o| e.key.as_deref() == Some(&o.key())) {
            good.push(prev.clone());
        }
    }
    let problem = (!errors.is_empty()).then(|| text(&errors));
    Ok((good, problem))
}

fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            manifest_files(&path, out);
        } else if matches!(
            path.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
}

impl ConfigDir {
    pub fn new(dir: impl Into<PathBuf>, interval: Duration) -> ConfigDir {
        ConfigDir {
            dir: dir.into(),
            interval,
            files: BTreeMap::new(),
            merged: BTreeMap::new(),
            duplicates: BTreeMap::new(),
        }
    }

    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir).unwrap_or(path).display().to_string()
    }

    /// The events of the re-read files alone, when no object is defined twice (before or after):
    /// then a file's objects are its own and only the objects whose documents changed are
    /// looked at. `None` sends the caller to the full merge.
    fn merge_touched(&mut self, touched: &[Touched]) -> Option<Vec<Event>> {
        use std::collections::HashSet;
        let mut upserts: Vec<(Key, Arc<Object>)> = Vec::new();
        let mut removed: Vec<Key> = Vec::new();
        let mut upserted: HashSet<Key> = HashSet::new();
        for (old, new) in touched {
            let old_ptrs: HashSet<*const Object> = old.iter().map(Arc::as_ptr).collect();
            let new_ptrs: HashSet<*const Object> = new.iter().map(Arc::as_ptr).collect();
            let gone: HashSet<Key> = old
                .iter()
                .filter(|o| !new_ptrs.contains(&Arc::as_ptr(o)))
                .map(|o| o.key())
                .collect();
            for o in new.iter().filter(|o| !old_ptrs.contains(&Arc::as_ptr(o))) {
                let key = o.key();
                // A key this file did not have before, already defined (by another file or
                // twice here): a duplicate, which only the full merge reports.
                if (!gone.contains(&key) && self.merged.contains_key(&key)) || !upserted.insert(key.clone()) {
                    return None;
                }
                upserts.push((key, o.clone()));
            }
            removed.extend(gone.into_iter().filter(|k| !upserted.contains(k)));
        }
        let mut events = Vec::new();
        upserts.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, o) in upserts {
            match self.merged.insert(key, o.clone()) {
                None => events.push(Event::Added(o)),
                Some(old) if *old != *o => events.push(Event::Updated(o)),
                Some(_) => {}
            }
        }
        removed.sort();
        for key in removed {
            if self.merged.remove(&key).is_some() {
                events.push(Event::Deleted(key));
            }
        }
        Some(events)
    }

    /// Looks at the directory once and returns what changed since the last call.
    pub fn scan(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        // Whether any file's objects may differ: without that, the merge below is skipped.
        let mut changed = false;
        // Each re-read or removed file's objects before and after.
        let mut touched: Vec<Touched> = Vec::new();
        let mut paths = Vec::new();
        manifest_files(&self.dir, &mut paths);
        paths.sort();
        // Removed files.
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !paths.contains(p))
            .cloned()
            .collect();
        for p in gone {
            if let Some(f) = self.files.remove(&p) {
                changed = true;
                touched.push((f.objects, Vec::new()));
                if f.problem.is_some() {
                    events.push(Event::Problem {
                        origin: self.rel(&p),
                        problem: None,
                    });
                }
            }
        }
        for p in &paths {
            let Some(st) = stamp(p) else { continue };
            if self.files.get(p).is_some_and(|f| f.stamp == st) {
                continue;
            }
            changed = true;
            let origin = self.rel(p);
            let entry = self.files.entry(p.clone()).or_insert(FileState {
                stamp: st,
                objects: Vec::new(),
                problem: None,
                documents: HashMap::new(),
            });
            entry.stamp = st;
            let parsed = std::fs::read_to_string(p)
                .map_err(|e| format!("{origin}: cannot read: {e}"))
                .and_then(|text| {
                    let docs = parse_cached(Path::new(&origin), &text, &mut entry.documents);
                    merge_documents(&entry.objects, docs)
                });
            if let Ok((objects, _)) = &parsed {
                touched.push((entry.objects.clone(), objects.clone()));
            }
            match parsed {
                Ok((objects, None)) => {
                    entry.objects = objects;
                    if entry.problem.take().is_some() {
                        events.push(Event::Problem {
                            origin: origin.clone(),
                            problem: None,
                        });
                    }
                }
                Ok((objects, Some(e))) => {
                    entry.objects = objects;
                    if entry.problem.as_deref() != Some(e.as_str()) {
                        entry.problem = Some(e.clone());
                        events.push(Event::Problem {
                            origin: origin.clone(),
                            problem: Some(e),
                        });
                    }
                }
                Err(e) => {
                    if entry.problem.as_deref() != Some(e.as_str()) {
                        entry.problem = Some(e.clone());
                        events.push(Event::Problem {
                            origin: origin.clone(),
                            problem: Some(e),
                        });
                    }
                }
            }
        }
        if !changed {
            return events;
        }
        if self.duplicates.is_empty() {
            if let Some(diff) = self.merge_touched(&touched) {
                events.extend(diff);
                return events;
            }
        }
        // Merge: first file (sorted) wins for a key.
        let paths: Vec<&PathBuf> = self.files.keys().collect();
        let mut owned: BTreeMap<Key, (usize, Arc<Object>)> = BTreeMap::new();
        let mut duplicates: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (i, f) in self.files.values().enumerate() {
            for o in &f.objects {
                match owned.entry(o.key()) {
                    std::collections::btree_map::Entry::Occupied(first) => {
                        let (key, (first, _)) = (first.key(), first.get());
                        duplicates.entry(paths[i].clone()).or_insert_with(|| {
                            format!(
                                "{}: {key} is also defined in {}; ignored here",
                                self.rel(paths[i]),
                                self.rel(paths[*first])
                            )
                        });
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert((i, o.clone()));
                    }
                }
            }
        }
        let merged: BTreeMap<Key, Arc<Object>> = owned.into_iter().map(|(k, (_, o))| (k, o)).collect();
        for (path, msg) in &duplicates {
            if self.duplicates.get(path) != Some(msg) {
                events.push(Event::Problem {
                    origin: format!("{} (duplicates)", self.rel(path)),
                    problem: Some(msg.clone()),
                });
            }
        }
        for path in self.duplicates.keys() {
            if !duplicates.contains_key(path) {
                events.push(Event::Problem {
                    origin: format!("{} (duplicates)", self.rel(path)),
                    problem: None,
                });
            }
        }
        self.duplicates = duplicates;
        for (key, o) in &merged {
            match self.merged.get(key) {
                None => events.push(Event::Added(o.clone())),
                Some(old) if !Arc::ptr_eq(old, o) && old != o => events.push(Event::Updated(o.clone())),
                Some(_) => {}
            }
        }
        for key in self.merged.keys() {
            if !merged.contains_key(key) {
                events.push(Event::Deleted(key.clone()));
            }
        }
        self.merged = merged;
        events
    }
}

/// How long the directory must stay quiet after a change is seen before it is read, so a file
/// written in several `write`s (an editor without atomic saves) is read whole.
const SETTLE: Duration = Duration::from_millis(5);
/// The longest a stream of changes can postpone a read.
const SETTLE_MAX: Duration = Duration::from_millis(100);

/// Whether an inotify event can change what the directory holds: hidden files (editors' and
/// atomic writers' temporaries) and reads do not.
fn relevant(event: &notify::Event) -> bool {
    use notify::EventKind;
    if matches!(
        event.kind,
        EventKind::Access(notify::event::AccessKind::Open(_) | notify::event::AccessKind::Read)
    ) {
        return false;
    }
    event.paths.is_empty()
        || event.paths.iter().any(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
}

/// Starts an inotify watch that sends on `wake` when the directory changes. `None` while the
/// directory cannot be watched (it does not exist yet); the caller retries on its next poll.
fn watch(dir: &Path, wake: std::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // An error (e.g. the event queue overflowed) is a reason to look again too.
        if res.as_ref().map_or(true, relevant) {
            let _ = wake.send(());
        }
    })
    .map_err(|e| tracing::warn!("config dir: no inotify ({e}); polling only"))
    .ok()?;
    match watcher.watch(dir, notify::RecursiveMode::Recursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::debug!(dir = %dir.display(), "config dir: not watched yet: {e}");
            None
        }
    }
}

impl Source for ConfigDir {
    fn start(mut self: Box<Self>, events: mpsc::UnboundedSender<Event>) {
        // Plain file I/O on its own thread: reading never competes with xDS for the runtime.
        let spawned = std::thread::Builder::new()
            .name("config-dir".into())
            .spawn(move || {
                if !self.dir.is_dir() {
                    let _ = events.send(Event::Problem {
                        origin: self.dir.display().to_string(),
                        problem: Some(format!("{}: not a directory (yet)", self.dir.display())),
                    });
                }
                let (wake_tx, wake) = std::sync::mpsc::channel();
                let mut watcher = None;
                let mut first = true;
                loop {
                    if watcher.is_none() {
                        watcher = watch(&self.dir, wake_tx.clone());
                    }
                    let started = std::time::Instant::now();
                    let scanned = self.scan();
                    if !scanned.is_empty() {
                        tracing::debug!(elapsed = ?started.elapsed(), events = scanned.len(), "config dir read");
                    }
                    for e in scanned {
                        if events.send(e).is_err() {
                            return;
                        }
                    }
                    if first {
                        first = false;
                        if events.send(Event::Synced).is_err() {
                            return;
                        }
                    }
                    if events.is_closed() {
                        return;
                    }
                    // Until something changes (or the next poll), then until it settles.
                    if wake.recv_timeout(self.interval).is_ok() {
                        let seen = std::time::Instant::now();
                        while wake.recv_timeout(SETTLE).is_ok() && seen.elapsed() < SETTLE_MAX {}
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the config-dir watcher: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, port: u32) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{ports: [{{port: {port}}}]}}\n")
    }

    fn render<O: std::fmt::Debug>(r: &[Result<O, DocError>]) -> Vec<String> {
        r.iter()
            .map(|x| match x {
                Ok(o) => format!("{o:?}"),
                Err(e) => e.to_string(),
            })
            .collect()
    }

    #[test]
    fn cached_parse_equals_a_full_parse_and_reuses_unchanged_documents() {
        let file = Path::new("svc.yaml");
        let mut cache = HashMap::new();
        let v1 = format!(
            "# header\n{}---\n{}---\n{}",
            svc("a", 80),
            svc("b", 81),
            svc("c", 82)
        );
        assert_eq!(
            render(&parse_cached(file, &v1, &mut cache)),
            render(&parse_documents(file, &v1))
        );
        assert_eq!(cache.len(), 3);
        // One document edited: the others come from the cache, the result is the full parse's.
        let v2 = v1.replace("port: 81", "port: 91");
        let before: Vec<&String> = cache.keys().collect::<Vec<_>>();
        assert_eq!(before.iter().filter(|k| k.contains("port: 81")).count(), 1);
        assert_eq!(
            render(&parse_cached(file, &v2, &mut cache)),
            render(&parse_documents(file, &v2))
        );
        assert!(
            cache.keys().any(|k| k.contains("port: 91")) && !cache.keys().any(|k| k.contains("port: 81"))
        );
        // A broken document: errors name the same document index as a full parse.
        let v3 = v2.replace("port: 91", "port: 99999");
        let cached = render(&parse_cached(file, &v3, &mut cache));
        assert_eq!(cached, render(&parse_documents(file, &v3)));
        assert!(cached.iter().any(|l| l.contains("document 1")), "{cached:?}");
        // Syntax a line split could get wrong falls back to the whole file.
        let v4 = format!(
            "--- {{apiVersion: v1, kind: Namespace, metadata: {{name: x}}}}\n---\n{}",
            svc("a", 80)
        );
        assert!(split_documents(&v4).is_none());
        assert_eq!(
            render(&parse_cached(file, &v4, &mut cache)),
            render(&parse_documents(file, &v4))
        );
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pilot-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn kinds(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Added(o) => format!("+{}", o.key()),
                Event::Updated(o) => format!("~{}", o.key()),
                Event::Deleted(k) => format!("-{k}"),
                Event::Problem { problem: Some(p), .. } => format!("!{p}"),
                Event::Problem {
                    origin,
                    problem: None,
                } => format!("ok {origin}"),
                Event::Synced => "synced".into(),
            })
            .collect()
    }

    const SVC: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn bad_file_keeps_its_last_good_objects_until_fixed() {
        let d = tmp("lastgood");
        let f = d.join("web.yaml");
        std::fs::write(&f, SVC).unwrap();
        let mut src = ConfigDir::new(&d, Duration::from_millis(10));
        assert_eq!(kinds(&src.scan()), ["+Service a/web"]);
        std::fs::write(&f, format!("{SVC}---\napiVersion: v1\nkind: Service\nmetadata: {{name: x}}\nspec: {{ports: [{{port: 0}}]}}\n")).unwrap();
        let ev = kinds(&src.scan());
        assert_eq!(
            ev,
            ["!web.yaml: document 1 (Service x): spec.ports[0].port: 0 is out of range 1-65535"]
        );
        std::fs::write(&f, SVC.replace("80", "81")).unwrap();
        assert_eq!(kinds(&src.scan()), ["ok web.yaml", "~Service a/web"]);
        std::fs::remove_file(&f).unwrap();
        assert_eq!(kinds(&src.scan()), ["-Service a/web"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn duplicates_across_files_keep_the_first() {
        let d = tmp("dups");
        std::fs::write(d.join("a.yaml"), SVC).unwrap();
        std::fs::write(d.join("b.yaml"), SVC.replace("80", "81")).unwrap();
        let mut src = ConfigDir::new(&d, Duration::from_millis(10));
        let ev = kinds(&src.scan());
        assert_eq!(
            ev,
            [
                "!b.yaml: Service a/web is also defined in a.yaml; ignored here",
                "+Service a/web"
            ]
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_edit_reports_only_the_edited_object_and_an_idle_poll_reports_nothing() {
        let d = std::env::temp_dir().join(format!("pilot-dir-incr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("svcs.yaml");
        let text: Vec<String> = (0..50).map(|i| svc(&format!("s{i}"), 80)).collect();
        std::fs::write(&f, text.join("---\n")).unwrap();
        let mut src = ConfigDir::new(&d, Duration::from_millis(10));
        assert_eq!(src.scan().len(), 50);
        assert!(src.scan().is_empty(), "nothing changed, nothing reported");
        let before: Vec<Arc<Object>> = src.merged.values().cloned().collect();
        let mut edited = text.clone();
        edited[7] = svc("s7", 8080);
        std::fs::write(&f, edited.join("---\n")).unwrap();
        let events = src.scan();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(matches!(&events[0], Event::Updated(o) if o.key().to_string() == "Service ns/s7"));
        // Unchanged documents keep the very objects they had.
        let after: Vec<Arc<Object>> = src.merged.values().cloned().collect();
        let shared = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, 49);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn a_change_is_seen_without_waiting_for_the_poll() {
        let d = tmp("inotify");
        std::fs::write(d.join("web.yaml"), SVC).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A poll interval far beyond the test's patience: only inotify can deliver in time.
        Box::new(ConfigDir::new(&d, Duration::from_secs(600))).start(tx);
        async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("an event within 5 s")
                .expect("source running")
        }
        assert!(matches!(next(&mut rx).await, Event::Added(_)));
        assert_eq!(next(&mut rx).await, Event::Synced);
        // Let the watch settle in, then write atomically (temporary + rename), as tools do.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = std::time::Instant::now();
        std::fs::write(d.join(".web.yaml.tmp"), SVC.replace("80", "81")).unwrap();
        std::fs::rename(d.join(".web.yaml.tmp"), d.join("web.yaml")).unwrap();
        match next(&mut rx).await {
            Event::Updated(o) => assert_eq!(o.key().to_string(), "Service a/web"),
            other => panic!("{other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
        // A new subdirectory's files are watched too.
        std::fs::create_dir(d.join("more")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(d.join("more/db.yaml"), SVC.replace("name: web", "name: db")).unwrap();
        match next(&mut rx).await {
            Event::Added(o) => assert_eq!(o.key().to_string(), "Service a/db"),
            other => panic!("{other:?}"),
        }
        drop(rx);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Random edits (changed, added, removed and duplicated documents, files appearing and
    /// going): after every scan, the events applied to a copy give the same objects as a fresh
    /// read of the directory, whichever merge produced them.
    #[test]
    fn incremental_merge_matches_a_fresh_read() {
        let d = tmp("incr-random");
        let mut seed: u64 = 0x5eed;
        let mut rand = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut files: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 3];
        let mut src = ConfigDir::new(&d, Duration::from_millis(10));
        let mut applied: BTreeMap<Key, Arc<Object>> = BTreeMap::new();
        let mut fast = 0;
        for round in 0..60 {
            let f = rand(3) as usize;
            match rand(4) {
                0 => files[f].push((rand(12), rand(3))),
                1 if !files[f].is_empty() => {
                    let i = rand(files[f].len() as u64) as usize;
                    files[f].remove(i);
                }
                _ if !files[f].is_empty() => {
                    let i = rand(files[f].len() as u64) as usize;
                    files[f][i].1 = rand(3);
                }
                _ => {}
            }
            for (i, docs) in files.iter().enumerate() {
                let path = d.join(format!("f{i}.yaml"));
                if docs.is_empty() {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                let text: Vec<String> = docs
                    .iter()
                    .map(|(n, p)| svc(&format!("s{n}"), 80 + *p as u32))
                    .collect();
                std::fs::write(d.join(format!(".f{i}.tmp")), text.join("---\n")).unwrap();
                std::fs::rename(d.join(format!(".f{i}.tmp")), &path).unwrap();
            }
            fast += usize::from(src.duplicates.is_empty());
            for e in src.scan() {
                match e {
                    Event::Added(o) | Event::Updated(o) => {
                        applied.insert(o.key(), o);
                    }
                    Event::Deleted(k) => {
                        applied.remove(&k);
                    }
                    _ => {}
                }
            }
            let mut fresh = ConfigDir::new(&d, Duration::from_millis(10));
            fresh.scan();
            let want: Vec<String> = fresh.merged.values().map(|o| format!("{o:?}")).collect();
            let got: Vec<String> = applied.values().map(|o| format!("{o:?}")).collect();
            assert_eq!(got, want, "round {round}: {files:?}");
            assert_eq!(src.duplicates, fresh.duplicates, "round {round}");
        }
        // Both merges were exercised.
        assert!(
            (10..50).contains(&fast),
            "{fast} of 60 scans could take the incremental path"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
