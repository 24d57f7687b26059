"""Offline set-up of the external tools behind :mod:`bridgebench.evaluation.text`: Java, the aac-metrics jars and
NLTK's WordNet. Each function is idempotent, cheap on repeat calls and called lazily by the metrics.

What it assumes (measured in ``shared/design/install.md`` section 5):

* aac-metrics 0.5.4 looks for its jars under ``<cache_path>/aac-metrics/...``. The pycocoevalcap 1.2
  wheel ships ``meteor-1.5.jar`` (+ ``data/paraphrase-en.gz``), ``stanford-corenlp-3.4.1.jar`` (the PTB
  tokenizer) and the SPICE jars except Stanford CoreNLP 3.6.0 and its models jar. :func:`aac_setup`
  symlinks them into ``bridgebench.runtime.paths.cache_dir()/aac-metrics`` (or ``<cache_dir>/aac-metrics``), so
  METEOR and the PTB tokenizer run offline. SPICE (and so SPIDEr) stay unavailable unless someone puts
  the two CoreNLP 3.6.0 jars into ``aac-metrics/spice/lib`` by hand.
* aac-metrics accepts Java 8-13 only; Debian offers 17. The check is a module constant, lifted here to 99
  (``aac_metrics.utils.checks.MAX_JAVA_MAJOR_VERSION``). Java is ``$BRIDGEBENCH_JAVA``, else ``java`` on
  ``PATH``; ``BRIDGEBENCH_JAVA=off`` turns the Java tools off (METEOR and SPICE ``unavailable``, Python
  tokenisation): each Java metric call starts a JVM that loads METEOR's paraphrase table, about 10 s
  on 2 cores, which a smoke run or the default test suite does not need to pay.
* NLTK's METEOR needs the WordNet corpus, and ``nltk.download`` needs the internet. It is found (1) in
  NLTK's own data path, else (2) in a WordNet 3.0 dict folder, ``$BRIDGEBENCH_WORDNET_DIR`` or Debian's
  ``/usr/share/wordnet`` (``apt-get install wordnet-base wordnet-sense-index``), which is copied into
  ``<cache>/nltk_data/corpora/wordnet`` with the fixed ``lexnames`` file that Debian does not ship (NLTK
  refuses symlinks that leave its data roots, hence a copy, about 35 MB, made once).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

JAVA_ENV = "BRIDGEBENCH_JAVA"
WORDNET_ENV = "BRIDGEBENCH_WORDNET_DIR"
DEBIAN_WORDNET = "/usr/share/wordnet"

# The 45 lexicographer files of WordNet 3.0 (lexnames(5WN)): number, name, syntactic category.
_LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
]
_LEX_POS = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
                  "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc", "index.sense")


def _cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        path = Path(cache_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    from bridgebench.runtime.paths import cache_dir as default_cache_dir

    return default_cache_dir()


def _package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _link(dst: Path, src: Path) -> None:
    """Symlink ``dst -> src``; atomic (tmp link + os.replace) so parallel ranks cannot collide."""
    if dst.is_symlink() and os.readlink(dst) == str(src):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}")
    tmp.symlink_to(src)
    os.replace(tmp, dst)


# --------------------------------------------------------------------------------------------- Java
def java_major_version(java: str) -> int | None:
    """Major version of a java executable (``1.8`` -> 8, ``17.0.15`` -> 17), None if it does not run."""
    try:
        out = subprocess.run([java, "-version"], check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if out.returncode != 0 or match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> tuple[str | None, str]:
    """``(path, "")`` of a runnable Java, or ``(None, reason)``. Reads ``$BRIDGEBENCH_JAVA``/``PATH`` now."""
    java = os.environ.get(JAVA_ENV) or shutil.which("java")
    if java == "off":
        return None, f"Java tools turned off ({JAVA_ENV}=off)"
    if not java:
        return None, "java not found"
    if _java_version_cached(java) is None:
        return None, f"java at {java} does not run"
    return java, ""


@functools.lru_cache(maxsize=8)
def _java_version_cached(java: str) -> int | None:
    return java_major_version(java)


# ------------------------------------------------------------------------------------ aac-metrics
@dataclass(frozen=True)
class AacSetup:
    """What :func:`aac_setup` found. ``cache_path`` is what aac-metrics calls ``cache_path``."""

    cache_path: str
    java: str | None
    java_reason: str  # why Java is unusable ("" when usable)
    missing: tuple[str, ...] = field(default=())  # jars that pycocoevalcap did not provide

    @property
    def has_jar(self) -> dict[str, bool]:
        base = Path(self.cache_path) / "aac-metrics"
        return {
            "ptb": (base / "stanford_nlp" / "stanford-corenlp-3.4.1.jar").is_file(),
            "meteor": (base / "meteor" / "meteor-1.5.jar").is_file()
            and (base / "meteor" / "data" / "paraphrase-en.gz").is_file(),
        }


def aac_setup(cache_dir: str | os.PathLike | None = None) -> AacSetup:
    """Link the pycocoevalcap jars into ``<cache>/aac-metrics``, find Java and lift aac-metrics' Java
    ceiling. Idempotent; repeat calls cost one ``shutil.which``."""
    root = _cache_root(cache_dir)
    missing = _link_jars(str(root))
    java, reason = find_java()
    if java is not None:
        from aac_metrics.utils import checks

        checks.MAX_JAVA_MAJOR_VERSION = max(getattr(checks, "MAX_JAVA_MAJOR_VERSION", 0), 99)
    return AacSetup(cache_path=str(root), java=java, java_reason=reason, missing=missing)


@functools.lru_cache(maxsize=8)
def _link_jars(root: str) -> tuple[str, ...]:
    pc = _package_dir("pycocoevalcap")
    if pc is None:
        return ("pycocoevalcap (pip install pycocoevalcap==1.2)",)
    base = Path(root) / "aac-metrics"
    links = {
        "meteor/meteor-1.5.jar": pc / "meteor" / "meteor-1.5.jar",
        "meteor/data/paraphrase-en.gz": pc / "meteor" / "data" / "paraphrase-en.gz",
        "stanford_nlp/stanford-corenlp-3.4.1.jar": pc / "tokenizer" / "stanford-corenlp-3.4.1.jar",
        "spice/spice-1.0.jar": pc / "spice" / "spice-1.0.jar",
        **{f"spice/lib/{jar.name}": jar for jar in sorted((pc / "spice" / "lib").glob("*.jar"))},
    }
    missing = []
    for rel, src in links.items():
        if src.is_file():
            _link(base / rel, src)
        else:
            missing.append(rel)
    (base / "spice" / "cache").mkdir(parents=True, exist_ok=True)
    return tuple(missing)


# ---------------------------------------------------------------------------------------- WordNet
def wordnet_ready(cache_dir: str | os.PathLike | None = None) -> tuple[bool, str]:
    """Make ``nltk.corpus.wordnet`` loadable offline if the data exists anywhere; ``(ok, reason)``."""
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
        return True, ""
    except LookupError:
        pass
    try:
        nltk.data.find("corpora/wordnet.zip")
        return True, ""
    except LookupError:
        pass
    data_root = _cache_root(cache_dir) / "nltk_data"
    target = data_root / "corpora" / "wordnet"
    if not (target / "lexnames").is_file():
        source = Path(os.environ.get(WORDNET_ENV) or DEBIAN_WORDNET)
        absent = [name for name in _WORDNET_FILES if not (source / name).is_file()]
        if absent:
            return False, (
                "NLTK WordNet data absent (nltk.download needs the internet; "
                "`apt-get install wordnet-base wordnet-sense-index` or $BRIDGEBENCH_WORDNET_DIR provides it)"
            )
        tmp = target.with_name(f".wordnet.{uuid.uuid4().hex}")
        tmp.mkdir(parents=True)
        for name in _WORDNET_FILES:
            shutil.copyfile(source / name, tmp / name)
        (tmp / "lexnames").write_text(
            "".join(f"{i:02d}\t{name}\t{_LEX_POS[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))
        )
        try:
            os.replace(tmp, target)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    if str(data_root) not in nltk.data.path:
        nltk.data.path.insert(0, str(data_root))
    return True, ""


def punkt_ready() -> bool:
    """Whether NLTK's English Punkt model (needed by ``nltk.word_tokenize``) is installed."""
    import nltk

    try:  # NLTK >= 3.9 reads only the pickle-free punkt_tab
        nltk.data.find("tokenizers/punkt_tab/english/")
        return True
    except LookupError:
        return False


def hf_local_dir(*repo_ids: str) -> str | None:
    """Local snapshot folder of the first of ``repo_ids`` already in the Hugging Face cache (no download)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for repo_id in repo_ids:
        path = try_to_load_from_cache(repo_id, "config.json")
        if isinstance(path, str):
            return os.path.dirname(path)
    return None
