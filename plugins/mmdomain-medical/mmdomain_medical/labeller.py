"""Labels from reports: a rule-based labeller for the 14 CheXpert observations that tells
negated and uncertain mentions from positive ones, for sites that have reports but no label
file (``mmdomain medical label`` writes its output as a CheXpert-format CSV).

Why our own rules and not a library: negspacy and medspaCy are maintained NegEx / ConText
implementations, and both run on a blank spaCy pipeline without a downloaded model. But they
need spaCy itself (medspaCy also pins QuickUMLS, PyRuSH, pysbd...) on every hospital's
machine, and negspacy only handles negation, so the mention phrases, uncertainty cues and
aggregation would have been ours anyway. The rules below follow the CheXpert labeller (Irvin
et al., 2019: mention phrases, then uncertainty before negation, then aggregation) and NegEx
(Chapman et al., 2001: pre- and post-cues, pseudo-negations, termination terms). They are
data, below, and can be read and extended (most of this module's ~300 lines are those tables).

How a report is labelled:

1. Text: the chosen sections (FINDINGS and IMPRESSION by default) of the de-identified report,
   else the whole text when it has none of them. It is lower-cased, its whitespace collapsed,
   and cut at ``MAX_REPORT_CHARS`` (a capped report is logged, by length only).
2. Scope: sentences end at ``.`` (not before a digit: "1.5 cm"; not after "vs"), ``;`` and
   ``!``, and a sentence is cut into clauses at ``TERMINATIONS`` ("but", "however", "there
   is"...). No cue reaches across a clause boundary. ``?`` is an uncertainty cue, not an end.
3. Mentions: each observation's ``MENTIONS`` phrases; a few normal statements ("heart size is
   normal", "normal mediastinal contours") are negative mentions (``NORMAL``).
4. Each mention is classified by the nearest cue before it in its clause (``PRE_UNCERTAIN``,
   ``PRE_NEGATION``, ``PSEUDO``) and the nearest cue after it (``POST_UNCERTAIN``,
   ``POST_NEGATION``) if that one is within ``POST_WINDOW`` characters with no comma between.
   Uncertain if either is an uncertainty cue; else negative if either is a negation (a
   pseudo-negation before it, "no change in", cancels a negation); else positive. Where cues
   overlap, uncertainty wins ("cannot be excluded" is not a negation), then pseudo-negation.
5. Aggregation per observation: positive > uncertain > negative (CheXpert's order); not
   mentioned = blank. "No Finding" is positive when no observation other than Support Devices
   is positive or uncertain, else blank (as in CheXpert).

Values are CheXpert's: ``1.0`` positive, ``0.0`` negative, ``-1.0`` uncertain, ``""`` not
mentioned; ``labels.encode`` applies the same uncertainty policies to them as to any CheXpert
file. Every pattern is a flat alternation of literal phrases with bounded word tails, no
nested quantifier, so matching is linear in the text length.

Known limits (rules, not a parser): a negation before a comma-separated list negates all of it,
so "no pneumothorax, small effusion" reads the effusion as negated ("no pneumothorax, but a
small effusion" is right); post-cues do not reach back over a comma ("effusion, consolidation
are not seen" negates only the consolidation); lateral/temporal qualifiers and hedges such as
"top normal" are not modelled; "No Finding" is computed, not read.
"""

from __future__ import annotations

import bisect
import logging
import re
from dataclasses import dataclass
from typing import Iterable

from .facts import CHEXPERT_LABELS
from .reports import select_sections, split_sections

log = logging.getLogger(__name__)

POSITIVE, UNCERTAIN, NEGATIVE, BLANK = "1.0", "-1.0", "0.0", ""
_RANK = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1, BLANK: 0}
NO_FINDING = "No Finding"
# Observations that do not block "No Finding" (CheXpert: devices are not a finding).
NOT_A_FINDING = frozenset({NO_FINDING, "Support Devices"})

DEFAULT_LABEL_SECTIONS: tuple[str, ...] = ("findings", "impression")
MAX_REPORT_CHARS = 20_000  # a chest X-ray report is a few hundred to a few thousand characters
POST_WINDOW = 40  # characters between a mention and a post-cue that still applies to it

# A word with a bounded tail: "atelecta" + up to 4 letters (atelectasis, atelectatic...).
_T = "[a-z]{0,%d}"

# -- mentions --------------------------------------------------------------------------------
# Regex fragments on lower-cased, single-spaced text; one space = one space. Word boundaries are
# added around each fragment.
_HEART = r"(?:heart|heart size|cardiac silhouette|cardiac shadow|cardiac size|cardiac contours?)"
_DEGREE = r"(?:mildly |moderately |markedly |severely |slightly |significantly |again |now )?"
_BE = r"(?:is |are |appears |appear |remains |remain |is again |has |have )?"
_MEDIASTINUM = r"(?:cardio)?mediastin" + _T % 4
MENTIONS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelecta" + _T % 4, "collapse"),
    "Cardiomegaly": (
        "cardiomegal" + _T % 2, "cardiac enlargement",
        r"(?:enlarged|enlargement of the) (?:heart|cardiac silhouette|cardiac shadow|cardiac size)",
        _HEART + " " + _BE + _DEGREE + "enlarged",
    ),
    "Consolidation": ("consolidat" + _T % 5,),
    "Edema": ("o?edema" + _T % 4, r"(?:pulmonary|vascular|venous|interstitial) congestion", "vascular engorgement",
              "heart failure", "chf"),
    "Enlarged Cardiomediastinum": (
        r"(?:enlarged|widened|widening of the|enlargement of the) " + _MEDIASTINUM,
        _MEDIASTINUM + " (?:widening|enlargement)",
        _MEDIASTINUM + " (?:silhouette |contours? )?" + _BE + _DEGREE + "(?:widened|enlarged)",
    ),
    "Fracture": ("fractur" + _T % 3, "fx"),
    "Lung Lesion": ("nodul" + _T % 3, "mass(?:es)?", "lesions?", "neoplas" + _T % 3, "tumou?rs?", "carcinoma",
                    "metasta" + _T % 5),
    "Lung Opacity": ("opaci" + _T % 8, "infiltra" + _T % 5, "air ?space (?:disease|process)", "densit(?:y|ies)",
                     "haziness", "hazy", "ground ?glass"),
    "Pleural Effusion": ("(?<!pericardial )effusions?", "pleural fluid", "hydrothorax",
                         "blunting of the (?:left |right |bilateral )?costophrenic"),
    "Pleural Other": ("pleural (?:thickening|plaques?|scarring|calcification|abnormalit" + _T % 3 + "|disease|other)",
                      "fibrothorax", "pleural-parenchymal scarring"),
    "Pneumonia": ("pneumonia" + _T % 1, "bronchopneumonia", "infectious process", "infection"),
    "Pneumothorax": ("pneumothora" + _T % 4, "hydropneumothorax", "ptx"),
    "Support Devices": (
        "tubes?", "catheters?", "pacemakers?", "pacers?", "defibrillators?", "a?icds?", "stents?", "drains?",
        "picc", "port", "port-?a-?cath", "swan-?ganz", "devices?", "support devices?",
        r"(?:central|venous|arterial|picc|ij|jugular|subclavian|midline|dialysis|femoral|hickman|port) "
        r"(?:venous )?(?:catheter )?lines?",
        r"(?:sternotomy|sternal|pacing|pacer|pacemaker|epicardial) (?:wires?|leads?)",
        r"(?:ecg|ekg|monitoring) leads?", r"(?:surgical|vascular|embolization) clips?",
        r"(?:prosthetic|mechanical) (?:mitral |aortic |tricuspid )?valves?", "valve replacement",
    ),
}
# Normal statements: negative mentions whatever the cues around them.
NORMAL: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        _HEART + " " + _BE + r"(?:normal|within normal limits|not enlarged|unremarkable)",
        r"normal (?:heart size|heart|cardiac size|cardiac silhouette|sized heart)",
    ),
    "Enlarged Cardiomediastinum": (
        _MEDIASTINUM + r" (?:silhouette |contours? |structures )?" + _BE
        + r"(?:normal|within normal limits|unremarkable|not widened|not enlarged)",
        r"normal (?:cardio)?mediastinal (?:silhouette|contours?|structures)",
    ),
}

# -- cues ------------------------------------------------------------------------------------
_SEEN = r"(?:seen|identified|present|visualized|visible|appreciated|demonstrated|evident|noted|detected|apparent)"
PRE_NEGATION: tuple[str, ...] = (
    "no", "without", "negative for", "free of", "clear of", "absence of", "resolution of", "removal of",
    "no evidence of", "no signs? of", "no findings? of", "never",
)
POST_NEGATION: tuple[str, ...] = (
    r"(?:is |are |was |were |has been |have been )?(?:not|no longer) " + _SEEN,
    r"(?:is |are |has |have )?(?:now )?(?:absent|resolved|cleared)", r"(?:has |have )?been removed", "removed",
    r"(?:has |have )?been (?:excluded|ruled out)", "ruled out", "none",
)
PRE_UNCERTAIN: tuple[str, ...] = (
    "possible", "possibly", "probable", "probably", "likely", "most likely", "questionable", "question of",
    "questioned", "equivocal", "indeterminate", "suspicious for", "suspicion of", "suspected", "suspect",
    "concern for", "concerning for", "worrisome for", "suggestive of", "suggests?", "suggesting", "suggestion of",
    r"(?:may|might|could) (?:be|represent|reflect|indicate|relate to)", "cannot exclude", "can not exclude",
    "can't exclude", "cannot rule out", "can not rule out", "rule out", "r/o", "to exclude", "evaluate for",
    "evaluation for", "assess for", "borderline", r"differential (?:diagnosis )?(?:includes|include|of)",
    "versus", "vs", "uncertain", "unclear", "presumed", "presumably", r"(?:felt|thought) to (?:be|represent)",
    r"\?",
)
POST_UNCERTAIN: tuple[str, ...] = (
    r"(?:is |are )(?:possible|likely|suspected|questioned|probable|questionable|uncertain|a possibility)",
    r"(?:cannot|can not|can't|could not|may not) be (?:entirely |completely |totally |definitely )?"
    r"(?:excluded|ruled out)",
    r"(?:is |are )?not (?:entirely |completely |totally |definitely )?(?:excluded|ruled out)",
    "versus", "vs", "suspected", "questioned", r"\?",
)
# Phrases that look like a negation but are not one: "no change in the effusion" states one.
PSEUDO: tuple[str, ...] = (
    r"no (?:significant |substantial |appreciable |definite )?(?:interval )?(?:change|increase|decrease|worsening)",
    "no further change", "not only", r"without (?:significant |interval )?change", "not changed",
    "gram negative", "not necessarily",
)
# Clause boundaries: no cue reaches across one.
TERMINATIONS: tuple[str, ...] = (
    "but", "however", "although", "though", "whereas", "except", "aside from", "apart from", "other than",
    "nevertheless", "nonetheless", "otherwise", r"there (?:is|are|has been|have been)", "which is", "which are",
)

_NEG, _UNC, _PSEUDO = "neg", "unc", "pseudo"
_CUE_PRIORITY = {_UNC: 0, _PSEUDO: 1, _NEG: 2}  # where cues overlap, the lower wins


def _alternation(fragments: Iterable[str]) -> re.Pattern:
    """One pattern: the fragments as whole words (a boundary where a fragment starts or ends
    with a letter), longest first."""
    parts = []
    for frag in sorted(set(fragments), key=len, reverse=True):
        head = r"\b" if frag[0].isalnum() or frag[0] == "(" else ""
        tail = r"\b" if frag[-1].isalnum() or frag[-1] in ")}?" and not frag.endswith(r"\?") else ""
        parts.append(f"{head}{frag}{tail}")
    return re.compile("|".join(f"(?:{p})" for p in parts))


_MENTION_RE = {name: _alternation(p) for name, p in MENTIONS.items()}
_NORMAL_RE = {name: _alternation(p) for name, p in NORMAL.items()}
_PRE_RE = ((_UNC, _alternation(PRE_UNCERTAIN)), (_PSEUDO, _alternation(PSEUDO)), (_NEG, _alternation(PRE_NEGATION)))
_POST_RE = ((_UNC, _alternation(POST_UNCERTAIN)), (_NEG, _alternation(POST_NEGATION)))
_TERMINATION_RE = re.compile(r"[;!]|\.(?!\d)|" + _alternation(TERMINATIONS).pattern)
_ABBREVIATIONS = re.compile(r"\b(?:vs|e\.g|i\.e|approx)\.(?=\s|$)")  # "vs." does not end a sentence


@dataclass(frozen=True)
class Mention:
    label: str
    value: str  # POSITIVE | UNCERTAIN | NEGATIVE
    start: int  # offsets in the normalised text (``normalise``)
    end: int


@dataclass(frozen=True)
class ReportLabels:
    values: dict[str, str]  # label -> CheXpert value, every label of CHEXPERT_LABELS
    source: str  # "sections" | "whole text" (none of the chosen sections) | "empty"
    capped: bool  # the text was longer than max_chars and was cut


def normalise(text: str, max_chars: int | None = MAX_REPORT_CHARS) -> tuple[str, bool]:
    """Lower-cased, single-spaced, abbreviations' dots dropped, at most ``max_chars``."""
    text = " ".join(text.lower().split())
    text = _ABBREVIATIONS.sub(lambda m: m.group(0)[:-1].replace(".", ""), text)
    if max_chars is not None and len(text) > max_chars:
        log.warning("report text of %d characters capped at %d characters for labelling", len(text), max_chars)
        return text[:max_chars], True
    return text, False


def _cues(text: str, patterns) -> list[tuple[int, int, str]]:
    """Cue spans; where two overlap, the higher priority (uncertain > pseudo > negation) stays."""
    found = sorted(((m.start(), m.end(), kind) for kind, rx in patterns for m in rx.finditer(text)
                    if m.end() > m.start()), key=lambda c: (c[0], _CUE_PRIORITY[c[2]], -c[1]))
    kept: list[tuple[int, int, str]] = []
    for cue in found:
        if kept and cue[0] < kept[-1][1]:  # overlaps the previous kept cue
            if _CUE_PRIORITY[cue[2]] < _CUE_PRIORITY[kept[-1][2]]:
                kept[-1] = cue
            continue
        kept.append(cue)
    return kept


def find_mentions(text: str, *, normalised: bool = False, max_chars: int | None = MAX_REPORT_CHARS) -> list[Mention]:
    """Every mention of an observation in ``text`` with its value, in text order."""
    if not normalised:
        text, _ = normalise(text, max_chars)
    term_ends = [m.end() for m in _TERMINATION_RE.finditer(text) if m.end() > m.start()]
    # the cue lists of both directions share the overlap resolution
    pre = _cues(text, _PRE_RE)
    post = _cues(text, _POST_RE)
    pre_ends = [c[1] for c in pre]
    post_starts = [c[0] for c in post]

    def clause(pos: int) -> int:
        return bisect.bisect_right(term_ends, pos)

    out: list[Mention] = []
    for name in CHEXPERT_LABELS:
        normal = _NORMAL_RE.get(name)
        spans: list[tuple[int, int]] = []
        if normal is not None:
            for m in normal.finditer(text):
                spans.append((m.start(), m.end()))
                out.append(Mention(name, NEGATIVE, m.start(), m.end()))
        rx = _MENTION_RE.get(name)
        if rx is None:
            continue
        for m in rx.finditer(text):
            s, e = m.start(), m.end()
            if any(a <= s < b for a, b in spans):  # part of a normal statement
                continue
            kinds = set()
            i = bisect.bisect_right(pre_ends, s) - 1
            if i >= 0 and clause(pre[i][0]) == clause(s):
                kinds.add(pre[i][2])
            j = bisect.bisect_left(post_starts, e)
            if j < len(post):
                gap_start = post[j][0]
                if gap_start - e <= POST_WINDOW and clause(gap_start) == clause(e) and "," not in text[e:gap_start]:
                    kinds.add(post[j][2])
            if _UNC in kinds:
                value = UNCERTAIN
            elif _NEG in kinds and _PSEUDO not in kinds:
                value = NEGATIVE
            else:
                value = POSITIVE
            out.append(Mention(name, value, s, e))
    return sorted(out, key=lambda x: (x.start, x.label))


def aggregate(mentions: Iterable[Mention], labels: tuple[str, ...] = CHEXPERT_LABELS) -> dict[str, str]:
    """Mentions -> one CheXpert value per label: positive > uncertain > negative > blank;
    "No Finding" = positive when no finding (devices aside) is positive or uncertain."""
    values = {name: BLANK for name in labels}
    for m in mentions:
        if m.label in values and _RANK[m.value] > _RANK[values[m.label]]:
            values[m.label] = m.value
    if NO_FINDING in values:
        found = any(v in (POSITIVE, UNCERTAIN) for k, v in values.items() if k not in NOT_A_FINDING)
        values[NO_FINDING] = BLANK if found else POSITIVE
    return values


def label_text(text: str, *, max_chars: int | None = MAX_REPORT_CHARS) -> dict[str, str]:
    """CheXpert values for a piece of report text (no section selection)."""
    return aggregate(find_mentions(text, max_chars=max_chars))


def report_text(report: str, sections: Iterable[str] = DEFAULT_LABEL_SECTIONS) -> tuple[str, str]:
    """The text to label: the chosen sections, each ended as a sentence, else the whole text.
    Returns ``(text, source)`` with source "sections", "whole text" or "empty"."""
    sections = tuple(sections)
    select_sections("", sections)  # validates the names
    parts = split_sections(report)
    chosen = [parts[s] for s in sections if parts.get(s)]
    if chosen:
        return " . ".join(chosen), "sections"
    whole = " ".join(report.split())
    return whole, ("whole text" if whole else "empty")


def label_report(report: str, sections: Iterable[str] = DEFAULT_LABEL_SECTIONS, *,
                 max_chars: int | None = MAX_REPORT_CHARS) -> ReportLabels:
    """Label a (de-identified) report: its chosen sections, else its whole text."""
    text, source = report_text(report, sections)
    norm, capped = normalise(text, max_chars)
    return ReportLabels(aggregate(find_mentions(norm, normalised=True)), source, capped)
