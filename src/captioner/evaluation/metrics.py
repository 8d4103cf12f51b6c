"""Official COCO caption metrics (BLEU, METEOR, ROUGE-L, CIDEr, optional SPICE) through pycocoevalcap.

Scores are on the 0-100 scale (pycocoevalcap's x 100), as every table, plot and file shows them. With
``java=True`` (the default) captions go through the Stanford PTBTokenizer and the scorers exactly as
pycocoevalcap's ``COCOEvalCap.evaluate`` runs them, so the numbers are comparable with published ones; we
never call ``evaluate()`` itself because it builds SPICE first, which downloads Stanford CoreNLP.
``java=False`` uses a pure-Python tokenizer and no METEOR: it emits a ``UserWarning`` because those scores
are close to, but not comparable with, published numbers. Captions in another language (``tokenizer``) are scored
on that language's own words (data/tokenizers.py), never through the PTB tokenizer; METEOR only where METEOR 1.5
has the language (``METEOR_LANGUAGES``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from nltk.tokenize import TreebankWordTokenizer
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as meteor_module
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import get_stanford_models
from pycocoevalcap.spice.spice import Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer

from captioner.data.tokenizers import ENGLISH, Tokenizer
from captioner.io import read_json, write_json

SCORERS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr")  # names accepted by ``metrics``
PYTHON_SCORERS = ("Bleu", "ROUGE_L", "CIDEr")  # those that need no java
# METEOR 1.5's languages (its -l code) beyond English; pycocoevalcap ships only the English paraphrase table, so these
# match exact words and stems
METEOR_LANGUAGES = {"de": "de", "fr": "fr", "es": "es"}
TABLE_ORDER = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")


class JavaMissingError(RuntimeError):
    """java is needed (PTB tokenizer, METEOR, SPICE) but not on PATH."""

    def __init__(self) -> None:
        super().__init__(
            "java not found on PATH: the official COCO metrics need it. Install a JRE "
            "(apt-get install default-jre-headless) or pass --no-java (python tokenizer, no METEOR, "
            "scores not comparable with published numbers)."
        )


def score_captions(
    results: dict[int, str],
    references: dict[int, list[str]],
    java: bool = True,
    spice: bool = False,
    metrics: tuple[str, ...] | None = None,
    meteor: Meteor | None = None,
    tokenizer: Tokenizer = ENGLISH,
) -> dict[str, float]:
    """Score candidate captions against references; keys Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr (0-100 scale).

    Scores the image ids of ``results`` (CIDEr's IDF is computed over them); ``metrics`` restricts the scorers
    to some of ``SCORERS``; ``java=False`` warns and skips METEOR; SPICE is skipped with a warning if
    pycocoevalcap's Stanford CoreNLP jars are absent; ``meteor`` reuses a running METEOR scorer (see score_columns).
    A non-English ``tokenizer`` scores its own words (``metric_note`` says how) without METEOR where METEOR 1.5
    lacks the language, and without SPICE (English only).
    """
    names = _check_metrics(metrics, java, spice)
    english = tokenizer.language == "en"
    if not english:
        names = tuple(n for n in names if n != "METEOR" or tokenizer.language in METEOR_LANGUAGES)
    if not results:
        raise ValueError("no results to score")
    missing = [i for i in results if not references.get(i)]
    if missing:
        raise ValueError(f"{len(missing)} image ids in results have no references, e.g. {missing[0]}")
    ids = list(results)
    if not english:
        if "METEOR" in names and shutil.which("java") is None:
            raise JavaMissingError()
        gts = {i: [" ".join(tokenizer.split(c)) for c in references[i]] for i in ids}
        res = {i: [" ".join(tokenizer.split(results[i]))] for i in ids}
    elif java:
        if shutil.which("java") is None:
            raise JavaMissingError()
        ptb = PTBTokenizer()
        with _java_stderr_silenced():
            gts = ptb.tokenize({i: [{"caption": _one_line(c)} for c in references[i]] for i in ids})
            res = ptb.tokenize({i: [{"caption": _one_line(results[i])}] for i in ids})
    else:
        warnings.warn(
            "java=False: python tokenizer and no METEOR; scores are not comparable with published numbers",
            stacklevel=2,
        )
        gts = {i: [_python_tokenize(c) for c in references[i]] for i in ids}
        res = {i: [_python_tokenize(results[i])] for i in ids}
    scores: dict[str, float] = {}
    for name in names:
        scores.update(_run_scorer(name, gts, res, meteor, tokenizer.language))
    if spice and not english:
        warnings.warn("SPICE parses English only: skipped", stacklevel=2)
    elif spice and _spice_ready():
        scores["SPICE"] = 100 * float(Spice().compute_score(gts, res)[0])
    return scores



def score_any(results: dict[int, str], references: dict[int, list[str]], metrics: tuple[str, ...] | None = None,
              log: Callable[[str], None] = lambda _: None, meteor: Meteor | None = None,
              tokenizer: Tokenizer = ENGLISH) -> dict[str, float]:
    """``score_captions`` with java when there is one, else the Python tokenizer (``log`` says so)."""
    try:
        return score_captions(results, references, metrics=metrics, meteor=meteor, tokenizer=tokenizer)
    except JavaMissingError as e:
        log(f"{e}\nfalling back to the Python tokenizer: BLEU/ROUGE-L/CIDEr only, not comparable with papers")
        return score_captions(results, references, java=False, metrics=metrics, tokenizer=tokenizer)


def score_columns(columns: dict[str, dict[int, str]], references: dict[int, list[str]],
                  log: Callable[[str], None] = lambda _: None,
                  tokenizer: Tokenizer = ENGLISH) -> dict[str, dict[str, float]]:
    """``score_any`` of several result sets (e.g. one per model and search), sharing one METEOR java process:
    starting one takes ~6 s, more than the rest of the scoring."""
    language = tokenizer.language
    with _meteor(language) if shutil.which("java") and language in ("en", *METEOR_LANGUAGES) else nullcontext() \
            as meteor:
        return {label: score_any(results, references, log=log, meteor=meteor, tokenizer=tokenizer)
                for label, results in columns.items()}


def metric_note(tokenizer: Tokenizer) -> str | None:
    """How captions of a language other than English are scored (None for English: pycocoevalcap as published)."""
    if tokenizer.language == "en":
        return None
    meteor = (f"METEOR 1.5 with -l {METEOR_LANGUAGES[tokenizer.language]}, exact and stem matches (pycocoevalcap "
              f"ships no paraphrase table for it)" if tokenizer.language in METEOR_LANGUAGES
              else "METEOR left out: METEOR 1.5 has no such language")
    return f"{tokenizer.describe()}: BLEU, ROUGE-L and CIDEr-D on these words (not the PTB tokenizer); {meteor}"


@contextmanager
def _java_stderr_silenced() -> Iterator[None]:
    """The java tokenizer prints a progress line per call to the inherited stderr: send it to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_metrics(metrics: tuple[str, ...] | None, java: bool, spice: bool) -> tuple[str, ...]:
    """The scorers to run, in the standard order; rejects unknown names and java-only ones without java."""
    if metrics is None:
        metrics = SCORERS if java else PYTHON_SCORERS
    unknown = set(metrics) - set(SCORERS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {SCORERS}")
    if not java and ("METEOR" in metrics or spice):
        raise ValueError("METEOR and SPICE need java; drop them or use java=True")
    return tuple(m for m in SCORERS if m in metrics)


def _one_line(caption: str) -> str:
    """Collapse all whitespace: a stray line separator would shift PTBTokenizer's line-to-image mapping."""
    return " ".join(caption.split())


def _python_tokenize(caption: str) -> str:
    """Lower-case, Treebank-tokenize and drop punctuation, approximating pycocoevalcap's PTBTokenizer."""
    tokens = TreebankWordTokenizer().tokenize(caption.lower(), convert_parentheses=True)
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


def _run_scorer(name: str, gts: dict[int, list[str]], res: dict[int, list[str]],
                meteor: Meteor | None = None, language: str = "en") -> dict[str, float]:
    """Run one pycocoevalcap scorer on tokenized captions; returns its corpus-level score(s)."""
    if name == "Bleu":
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        return {f"Bleu_{n}": 100 * float(b) for n, b in enumerate(bleu, 1)}
    if name == "METEOR":
        with nullcontext(meteor) if meteor is not None else _meteor(language) as meteor:
            return {"METEOR": 100 * float(meteor.compute_score(gts, res)[0])}
    scorer = Rouge() if name == "ROUGE_L" else Cider()
    return {name: 100 * float(scorer.compute_score(gts, res)[0])}


class LanguageMeteor(Meteor):
    """pycocoevalcap's METEOR scorer for another of METEOR 1.5's languages: ``-l <code>``, exact and stem modules."""

    def __init__(self, language: str) -> None:  # Meteor.__init__ starts java with '-l en': the same, our language
        self.meteor_cmd = ["java", "-Dfile.encoding=UTF-8", "-jar", "-Xmx2G", meteor_module.METEOR_JAR, "-", "-",
                           "-stdio", "-l", METEOR_LANGUAGES[language], "-norm", "-m", "exact stem"]
        self.meteor_p = subprocess.Popen(self.meteor_cmd, cwd=os.path.dirname(os.path.abspath(meteor_module.__file__)),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lock = threading.Lock()


@contextmanager
def _meteor(language: str = "en") -> Iterator[Meteor]:
    """A Meteor scorer whose java process is ended on exit (pycocoevalcap only ends it in ``__del__``)."""
    meteor = Meteor() if language == "en" else LanguageMeteor(language)
    try:
        yield meteor
    finally:
        if meteor.lock.locked():  # a failed compute_score keeps it, and __del__ would then block forever
            meteor.lock.release()
        with meteor.meteor_p as process:  # Popen's exit closes the pipes and waits
            process.kill()


def _spice_lib() -> Path:
    """Folder where pycocoevalcap looks for (and on first use downloads) SPICE's Stanford CoreNLP jars."""
    return Path(get_stanford_models.SPICEDIR) / get_stanford_models.SPICELIB


def _spice_ready() -> bool:
    """True if SPICE's Stanford CoreNLP jars are present; otherwise warn (never download)."""
    jars = [_spice_lib() / f"{get_stanford_models.JAR}{suffix}.jar" for suffix in ("", "-models")]
    missing = [str(j) for j in jars if not j.is_file()]
    if missing:
        warnings.warn(
            f"SPICE models not found at {', '.join(missing)}; SPICE skipped; they are downloaded by "
            "pycocoevalcap on first use with internet",
            stacklevel=3,
        )
    return not missing


def load_results(path: str | Path) -> dict[int, str]:
    """Read a COCO results file ``[{"image_id": int, "caption": str}, ...]``, validating every entry."""
    data = read_json(path, "results file")
    where = f"results file {path}"
    if not isinstance(data, list):
        raise ValueError(f"{where}: expected a list of {{image_id, caption}}, got {type(data).__name__}")
    results: dict[int, str] = {}
    for n, entry in enumerate(data):
        if not isinstance(entry, dict) or "image_id" not in entry or "caption" not in entry:
            raise ValueError(f"{where}: entry {n} has no image_id/caption: {entry!r:.200}")
        image_id, caption = entry["image_id"], entry["caption"]
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise ValueError(f"{where}: entry {n} has a non-integer image_id {image_id!r}")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{where}: image_id {image_id} (entry {n}) has an empty or non-string caption")
        if image_id in results:
            raise ValueError(f"{where}: duplicate image_id {image_id} (entry {n})")
        results[image_id] = caption
    return results


def load_references(path: str | Path) -> dict[int, list[str]]:
    """Read a COCO caption annotation file into ``{image_id: [captions]}`` (only captioned images)."""
    data = read_json(path, "annotation file")
    where = f"annotation file {path}"
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise ValueError(f"{where}: not in COCO captions format (needs 'images' and 'annotations' keys)")
    references: dict[int, list[str]] = {}
    for n, ann in enumerate(data["annotations"]):
        ann = ann if isinstance(ann, dict) else {}
        image_id, caption = ann.get("image_id"), ann.get("caption")
        if not isinstance(image_id, int) or not isinstance(caption, str):
            raise ValueError(f"{where}: annotation {n} has no integer image_id and string caption")
        references.setdefault(image_id, []).append(caption)
    return references


def score_files(
    results_path: str | Path, annotations_path: str | Path, java: bool = True, spice: bool = False,
    tokenizer: Tokenizer = ENGLISH,
) -> dict[str, float]:
    """Score a results file against an annotation file, on the image ids present in the results."""
    results = load_results(results_path)
    references = load_references(annotations_path)
    unknown = [i for i in results if i not in references]
    if unknown:
        raise ValueError(
            f"{len(unknown)} image ids in results {results_path} are not in annotations {annotations_path}, "
            f"e.g. {unknown[0]}"
        )
    return score_captions(results, {i: references[i] for i in results}, java=java, spice=spice, tokenizer=tokenizer)


def format_table(columns: dict[str, dict[str, float]]) -> str:
    """Markdown table of metrics on the 0-100 scale, one column per named model.

    e.g. ``format_table({"model": scores, "blind": blind_scores})``; a metric missing from a column shows "-".
    """
    seen = {metric: None for scores in columns.values() for metric in scores}
    rows = [m for m in TABLE_ORDER if m in seen] + [m for m in seen if m not in TABLE_ORDER]
    lines = [
        "| metric | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for metric in rows:
        cells = [f"{s[metric]:.1f}" if metric in s else "-" for s in columns.values()]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(path: str | Path, results: dict[int, str]) -> Path:
    """Atomically write captions in the COCO results format, sorted by image_id."""
    return write_json(path, [{"image_id": i, "caption": c} for i, c in sorted(results.items())])
