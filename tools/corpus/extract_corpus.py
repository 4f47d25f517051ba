#!/usr/bin/env python3
"""Extracts, normalises, deduplicates and splits Tern's corpus. Called by build.sh: extract_corpus.py OUT_DIR.

Documents: one GCIDE dictionary entry, one fortune, one HTML page (Python 3.11 docs, Debian Reference).
The King James Bible (bible-kjv) becomes kjv.txt only, never part of train/validation.
train.txt / validation.txt hold documents in hash order, each followed by SEPARATOR.
"""
import glob, gzip, hashlib, html.parser, json, os, re, subprocess, sys, unicodedata

SEPARATOR = "\n<|endoftext|>\n"
VALIDATION_PERCENT = 1  # a document goes to validation when its hash mod 100 is below this

_control = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff]")
_trailing = re.compile(r"[ \t]+\n")
_blank_runs = re.compile(r"\n{3,}")


def normalise(text):
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    text = unicodedata.normalize("NFC", text)
    text = _control.sub("", text)
    text = _trailing.sub("\n", text + "\n")
    text = _blank_runs.sub("\n\n", text)
    return text.strip("\n").rstrip()


def decode(raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def gcide():
    """One document per dictionary entry, in file order; index lines give base64 offset and length."""
    data = gzip.open("/usr/share/dictd/gcide.dict.dz").read()
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    def num(s):
        n = 0
        for c in s:
            n = n * 64 + b64.index(c)
        return n
    spans = set()
    for line in open("/usr/share/dictd/gcide.index", encoding="utf-8", errors="replace"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 3 and not parts[0].startswith("00-database"):
            spans.add((num(parts[1]), num(parts[2])))
    source_tag = re.compile(r"^\s*\[[^\]\n]{1,40}\]\s*$", re.M)  # "[1913 Webster]", "[PJC]" lines
    for off, length in sorted(spans):
        text = decode(data[off:off + length])
        text = source_tag.sub("", text)
        text = "\n".join(l[3:] if l.startswith("   ") else l for l in text.split("\n"))  # the entry indent
        yield text


def fortunes(package):
    files = sorted(p for p in subprocess.run(["dpkg", "-L", package], capture_output=True, text=True).stdout.split("\n")
                   if p.startswith("/usr/share/games/fortunes/") and os.path.isfile(p) and not os.path.islink(p)
                   and not p.endswith((".dat", ".u8")))
    for path in files:
        for doc in re.split(r"\n%\n", decode(open(path, "rb").read()).replace("\r\n", "\n")):
            yield doc


class _HtmlText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "ul", "ol", "dl", "dt", "dd", "pre", "table", "tr", "h1", "h2", "h3", "h4", "h5",
             "h6", "section", "blockquote", "title", "hr"}
    SKIP = {"script", "style", "nav", "header", "footer", "head", "form", "button"}
    SKIP_CLASS = ("navheader", "navfooter", "sphinxsidebar", "related", "footer", "headerlink", "mobile-nav", "toc")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip, self.stack, self.pre = [], 0, [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("br", "hr", "img", "meta", "link", "input"):
            if tag in ("br", "hr"):
                self.out.append("\n")
            return
        cls = dict(attrs).get("class") or ""
        skipping = tag in self.SKIP or any(c in cls.split() for c in self.SKIP_CLASS)
        self.stack.append((tag, skipping))
        self.skip += skipping
        self.pre += tag == "pre"
        if tag in self.BLOCK:
            self.out.append("\n\n" if tag in ("p", "pre", "h1", "h2", "h3", "h4", "section", "dl") else "\n")

    def handle_endtag(self, tag):
        while self.stack:
            t, skipping = self.stack.pop()
            self.skip -= skipping
            self.pre -= t == "pre"
            if t == tag:
                break
        if tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if self.skip:
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_text(path):
    raw = decode(open(path, "rb").read())
    m = re.search(r"<div[^>]*role=\"main\"[^>]*>", raw)  # Sphinx: only the page body, not the navigation
    if m:
        raw = raw[m.start():]
    p = _HtmlText()
    p.feed(raw)
    p.close()
    text = "".join(p.out)
    return "\n".join(l.strip() if not l.startswith("    ") else l.rstrip() for l in text.split("\n"))


def html_pages(package, pattern):
    files = sorted(p for p in subprocess.run(["dpkg", "-L", package], capture_output=True, text=True).stdout.split("\n")
                   if re.search(pattern, p) and os.path.isfile(p))
    for path in files:
        if "/genindex" in path or "/search.html" in path or "/py-modindex" in path:
            continue
        yield html_text(path)


def kjv():
    """The whole Bible as one document: "Genesis 1" chapter headings, one verse per line (verse numbers dropped)."""
    out = subprocess.run(["bible", "-l10000", "gen1:1-rev22:21"], stdin=subprocess.DEVNULL, capture_output=True,
                         check=True).stdout
    lines = []
    for line in decode(out).split("\n"):
        m = re.match(r"^\s+\d+ (.*)$", line)
        if m:
            lines.append(m.group(1).strip())
        elif line.strip():
            lines += ["", line.strip(), ""] if lines else [line.strip(), ""]
        # blank lines: the headings above carry the structure
    return normalise("\n".join(lines)) + "\n"


# Read by hand from each package's copyright file (the extracted line is recorded next to it).
LICENCE_SUMMARY = {
    "dict-gcide": "GPL-2+",
    "fortunes": "BSD (Debian copyright file); fortune texts collected from the public",
    "fortunes-min": "BSD (Debian copyright file); fortune texts collected from the public",
    "python3.11-doc": "PSF License 2.0",
    "debian-reference-en": "GPL-2+",
    "bible-kjv-text": "GPL-2+ (package); the 1611 KJV text itself is public domain outside the UK",
}


def licence(package):
    """The first line of the package's copyright file that names a licence (GPL, BSD, PSF, public domain, ...)."""
    try:
        lines = open(f"/usr/share/doc/{package}/copyright", encoding="utf-8", errors="replace").read().split("\n")
    except OSError:
        return "unknown"
    for pattern in (r"^License:\s*\S", r"\bGPL\b|General Public License|\bBSD\b|public domain|Python Software Foundation|\bPSF\b|\bMIT\b",
                    r"licen[cs]e"):
        for l in lines:
            if re.search(pattern, l, re.I) and "ftp://" not in l:
                return re.sub(r"^License:\s*", "", l.strip())
    return "unknown"


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    sources = [
        ("gcide", "dict-gcide", gcide),
        ("fortunes", "fortunes", lambda: fortunes("fortunes")),
        ("fortunes-min", "fortunes-min", lambda: fortunes("fortunes-min")),
        ("python3.11-doc", "python3.11-doc", lambda: html_pages("python3.11-doc", r"/html/.*\.html$")),
        ("debian-reference-en", "debian-reference-en", lambda: html_pages("debian-reference-en", r"\.en\.html$")),
    ]
    seen, docs, stats = set(), [], []
    for name, package, extract in sources:
        raw_docs = raw_bytes = kept = kept_bytes = 0
        for text in extract():
            raw_docs += 1
            raw_bytes += len(text.encode("utf-8"))
            text = normalise(text)
            if not text.strip() or "<|endoftext|>" in text:
                continue
            h = hashlib.sha256(text.encode("utf-8")).digest()
            if h in seen:
                continue
            seen.add(h)
            docs.append((h, text))
            kept += 1
            kept_bytes += len(text.encode("utf-8"))
        stats.append({"name": name, "package": package, "licence": LICENCE_SUMMARY.get(package, "unknown"), "licence_line": licence(package),
                      "copyright_file": f"/usr/share/doc/{package}/copyright",
                      "extracted_documents": raw_docs, "extracted_bytes": raw_bytes,
                      "documents": kept, "bytes": kept_bytes})
        print(f"{name:22} {kept:8d} documents {kept_bytes / 1e6:8.2f} MB (extracted {raw_docs}, {raw_bytes / 1e6:.2f} MB)", flush=True)
    docs.sort()
    splits = {"train": [], "validation": []}
    for h, text in docs:
        splits["validation" if int.from_bytes(h[:8], "big") % 100 < VALIDATION_PERCENT else "train"].append(text)
    summary = {}
    for split, items in splits.items():
        path = os.path.join(out, f"{split}.txt")
        with open(path + ".tmp", "w", encoding="utf-8", newline="\n") as f:
            for text in items:
                f.write(text + SEPARATOR)
        os.replace(path + ".tmp", path)
        summary[split] = {"file": f"{split}.txt", "documents": len(items), "bytes": os.path.getsize(path)}
        print(f"{split:22} {len(items):8d} documents {os.path.getsize(path) / 1e6:8.2f} MB", flush=True)
    bible = kjv()
    with open(os.path.join(out, "kjv.txt.tmp"), "w", encoding="utf-8", newline="\n") as f:
        f.write(bible)
    os.replace(os.path.join(out, "kjv.txt.tmp"), os.path.join(out, "kjv.txt"))
    summary["kjv"] = {"file": "kjv.txt", "documents": 1, "bytes": len(bible.encode("utf-8")),
                      "package": "bible-kjv-text", "licence": LICENCE_SUMMARY["bible-kjv-text"],
                      "licence_line": licence("bible-kjv-text"),
                      "note": "held out of train and validation: long-context and streaming evaluation"}
    print(f"{'kjv (held out)':22} {1:8d} documents {len(bible.encode('utf-8')) / 1e6:8.2f} MB", flush=True)
    meta = {"format": "UTF-8 text, NFC, \\n newlines; each document followed by the separator",
            "separator": SEPARATOR, "validation_percent": VALIDATION_PERCENT,
            "dedup": "exact, by SHA-256 of the normalised document, across all sources (first source wins)",
            "sources": stats, "splits": summary}
    with open(os.path.join(out, "corpus.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(os.path.join(out, "corpus.json.tmp"), os.path.join(out, "corpus.json"))


if __name__ == "__main__":
    main()
