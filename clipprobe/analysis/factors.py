"""What explains the differences between models: the upstream-factor mixed model and the correlations of
bias with downstream performance (Ghate et al., NAACL 2025). Pure functions on DataFrames, no I/O.

Input: one row per (model, test, order) with the response in ``value`` and the model's metadata
(``model``, ``params_total_m`` in millions, ``dataset_size`` in image-text pairs, ``arch_family``,
``dataset_family``); optionally ``category`` (the test's family: Gender, Race, ...) and ``checkpoint`` (the
checkpoint a model loads, when two names load one: counted once). For the report's measures ``test`` is a
category and ``order`` an attribute.

:func:`fit_factors` fits the linear mixed model of the paper with statsmodels' ``MixedLM`` (REML)::

    value ~ log_params + architecture_family + dataset_family + log_dataset_size
    groups = test family x order; random intercept and random slopes on log_params and log_dataset_size
    (unstructured covariance)

By default (:data:`SPECS` ``paper``) as the paper's analysis notebook specifies it: ``log_params`` and
``log_dataset_size`` are the natural logs z-scored over the rows fitted (population SD, as scikit-learn's
StandardScaler), so a coefficient is the change per standard deviation of the log size; the groups are
the test families (``category``) crossed with the orders (20 for the paper's 26 tests: its two or three
text tests of one family share a group); an architecture family with fewer than ``min_family_rows`` rows
(the paper: 30) or fewer than ``min_family_models`` checkpoints is pooled as ``Other`` and dataset
families are never pooled; reference levels are the first by name (statsmodels' default: the paper's
cc12m and CoCa; a pooled ``Other`` is never the reference unless it is the only level); terms are named as statsmodels' formula names them (``dataset_family[T.dfn]``) and the
random part as its summary does (``Group Var``, ``Group x log_params Cov``, ...), so that
:func:`paper_table` has the paper's layout. ``size_units="log10"`` fits the log10 sizes, centred (a
coefficient per tenfold); ``groups="test"`` gives every test its own group; ``pool`` names the factors
whose small families are pooled. A model-level term that does not vary, or that is a linear combination of
terms before it, is dropped with a note; so is its random slope. The model needs more checkpoints than
model-level terms (:data:`MSG_TOO_FEW_MODELS` says how many).

:func:`performance_correlations`: per (test, order), Pearson's r and Spearman's rho of the value with a
performance measure across models, two-sided p-values (t distribution with n - 2 degrees of freedom, as
``scipy.stats.pearsonr`` and ``spearmanr``), and Benjamini-Hochberg q-values over every row of the
table, for each of the two coefficients.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from typing import TYPE_CHECKING, Sequence

from clipprobe.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

OTHER = "Other"
MIN_FAMILY_ROWS = 30     # Ghate et al. pooled architecture families below 30 rows
MIN_FAMILY_MODELS = 2
MIN_CORRELATION_MODELS = 3
FACTORS = ("arch_family", "dataset_family")
TERM_NAMES = {"arch_family": "architecture_family", "dataset_family": "dataset_family"}   # the paper's names
SIZE_TERMS = {"log_params": "params_total_m", "log_dataset_size": "dataset_size"}
SIZE_UNITS = ("sd", "log10")
GROUPINGS = ("family", "test")
FACTOR_COLUMNS = ("model", "value", "test", "order", "params_total_m", "dataset_size", "arch_family",
                  "dataset_family")
METADATA_COLUMNS = ("params_total_m", "dataset_size", "arch_family", "dataset_family")
COEF_COLUMNS = ("term", "estimate", "std_error", "z", "p_value", "ci_low", "ci_high", "kind")
RANDOM_COLUMNS = ("component", "estimate", "std_error")
PAPER_COLUMNS = ("Coef.", "Std.Err.", "z", "P>|z|", "[0.025", "0.975]")
CORR_COLUMNS = ("test", "order", "n_models", "pearson_r", "pearson_p", "pearson_q", "spearman_rho", "spearman_p",
                "spearman_q")
UNKNOWN = "unknown"
GROUP = "Group"          # statsmodels' name of the random intercept

MSG_MISSING_COLUMNS = "factor table lacks column(s) {missing}; it needs {needed}"
MSG_TOO_FEW_MODELS = ("the mixed model needs at least {needed} models with known metadata for its {p} model-level "
                      "terms ({terms}); there are {n}{dropped}")
MSG_NO_METADATA = ("the mixed model needs {columns} of every model it fits, and none of the {n} model(s) has all "
                   "of them: {missing}; give them in a model table (columns {columns})")
MSG_TOO_FEW_GROUPS = "the mixed model needs at least 2 (test, order) groups; there is {n}"
MSG_NO_ROWS = "no rows to fit{why}"
MSG_REFERENCE = "reference {what} {value!r} is not among the families fitted ({valid})"
MSG_LEVEL = "level must be between 0 and 1, got {level}"
MSG_MIN = "{name} must be a whole number of at least {minimum}, got {value!r}"
MSG_CHOICE = "{name} must be one of {valid}, not {value!r}"


@dataclasses.dataclass(frozen=True)
class FactorSettings:
    """How the mixed model is set up (see the module docstring; the defaults are the paper's)."""

    size_units: str = "sd"
    groups: str = "family"
    pool: tuple[str, ...] = ("arch_family",)
    min_family_rows: int = MIN_FAMILY_ROWS
    min_family_models: int = MIN_FAMILY_MODELS
    reference_dataset_family: str | None = None
    reference_arch_family: str | None = None
    random_slopes: bool = True
    level: float = 0.95

    def check(self) -> "FactorSettings":
        for name, minimum in (("min_family_rows", 1), ("min_family_models", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UsageError(MSG_MIN.format(name=name, minimum=minimum, value=value))
        if not 0 < self.level < 1:
            raise UsageError(MSG_LEVEL.format(level=self.level))
        if self.size_units not in SIZE_UNITS:
            raise UsageError(MSG_CHOICE.format(name="size_units", valid=", ".join(SIZE_UNITS), value=self.size_units))
        if self.groups not in GROUPINGS:
            raise UsageError(MSG_CHOICE.format(name="groups", valid=", ".join(GROUPINGS), value=self.groups))
        for factor in self.pool:
            if factor not in FACTORS:
                raise UsageError(MSG_CHOICE.format(name="pool", valid=", ".join(FACTORS), value=factor))
        return self


# The paper's specification, and clipprobe's per-test alternative (every test its own group, sizes per tenfold,
# small families of both factors pooled).
SPECS = {
    "paper": FactorSettings(),
    "per-test": FactorSettings(size_units="log10", groups="test", pool=FACTORS),
}


@dataclasses.dataclass(frozen=True)
class FactorFit:
    """A fitted mixed model.

    ``coefficients``: one row per fixed effect (:data:`COEF_COLUMNS`; ``kind`` is ``intercept``,
    ``numeric`` or the factor's name); ``random``: the random-effects variances and covariances in
    statsmodels' names, with their standard errors, and the residual variance (``Scale``)
    (:data:`RANDOM_COLUMNS`); ``notes``: every pooling, dropped term, dropped model and convergence
    warning, in words; ``terms``: the model-level terms fitted; ``references``: the reference level of each
    factor; ``sizes``: per size term, the mean and SD of the log used (to convert a coefficient).
    """

    coefficients: "pd.DataFrame"
    random: "pd.DataFrame"
    notes: tuple[str, ...]
    n_rows: int
    n_models: int
    n_groups: int
    terms: tuple[str, ...]
    references: dict[str, str]
    converged: bool
    log_likelihood: float
    pooled: dict[str, tuple[str, ...]]
    settings: FactorSettings = FactorSettings()
    sizes: dict = dataclasses.field(default_factory=dict)


def _check_columns(df: "pd.DataFrame", needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(MSG_MISSING_COLUMNS.format(missing=", ".join(missing), needed=", ".join(needed)))


def _unit(df: "pd.DataFrame") -> str:
    return "checkpoint" if "checkpoint" in df.columns else "model"


def pool_families(df: "pd.DataFrame", column: str, *, min_rows: int, min_models: int) -> tuple["pd.Series", list[str]]:
    """The family column with families below ``min_rows`` rows or ``min_models`` models (checkpoints, where
    ``df`` has a ``checkpoint`` column) renamed ``Other``, and the names pooled (sorted)."""
    rows = df.groupby(column, sort=True).size()
    models = df.groupby(column, sort=True)[_unit(df)].nunique()
    small = sorted(f for f in rows.index if (rows[f] < min_rows or models[f] < min_models) and f != OTHER)
    if not small:
        return df[column].astype(str), []
    return df[column].astype(str).where(~df[column].isin(small), OTHER), small


def _size_term(values: "np.ndarray", units: str) -> tuple["np.ndarray", dict]:
    """The size term: z-scored natural log (population SD, as StandardScaler) or centred log10."""
    import numpy as np

    if units == "log10":
        logs = np.log10(values)
        return logs - logs.mean(), {"log": "log10", "mean": float(logs.mean()), "sd": 1.0}
    logs = np.log(values)
    sd = float(np.std(logs))
    z = (logs - logs.mean()) / sd if sd > 0 else np.zeros_like(logs)
    return z, {"log": "ln", "mean": float(logs.mean()), "sd": sd}


def _design(df: "pd.DataFrame", settings: FactorSettings, notes: list[str], dropped_text: str = ""):
    """Fixed-effect design (DataFrame), its term names, references, pooled families, random-slope columns,
    size transforms."""
    import numpy as np
    import pandas as pd

    pooled: dict[str, tuple[str, ...]] = {}
    fam = {}
    for column in FACTORS:
        if column in settings.pool:
            series, small = pool_families(df, column, min_rows=settings.min_family_rows,
                                          min_models=settings.min_family_models)
            if small:
                pooled[column] = tuple(small)
                notes.append(f"{TERM_NAMES[column].replace('_', ' ')} pooled as {OTHER!r} (fewer than "
                             f"{settings.min_family_rows} rows or {settings.min_family_models} checkpoints): "
                             f"{', '.join(small)}")
        else:
            series = df[column].astype(str)
        fam[column] = series
    x = pd.DataFrame(index=df.index)
    x["Intercept"] = 1.0
    references: dict[str, str] = {}
    for column, given in (("arch_family", settings.reference_arch_family),
                          ("dataset_family", settings.reference_dataset_family)):
        levels = sorted(fam[column].unique())
        if given is not None and given not in levels:
            raise UsageError(MSG_REFERENCE.format(what=column.replace("_", " "), value=given, valid=", ".join(levels)))
        named = [level for level in levels if level != OTHER] or levels
        ref = given if given is not None else named[0]
        references[column] = ref
        for level in levels:
            if level != ref:
                x[f"{TERM_NAMES[column]}[T.{level}]"] = (fam[column] == level).astype(float)
    sizes = {}
    for term, column in SIZE_TERMS.items():
        values, sizes[term] = _size_term(df[column].to_numpy(dtype=float) * (1e6 if column == "params_total_m"
                                                                              else 1.0), settings.size_units)
        x[term] = values
    varying = ["Intercept"]
    for column in x.columns[1:]:
        if np.ptp(x[column].to_numpy()) > 0:
            varying.append(column)
        else:
            notes.append(f"term {column} dropped: it does not vary across the models fitted")
    n_models = int(df[_unit(df)].nunique())
    if n_models < len(varying) + 1:
        raise DataError(MSG_TOO_FEW_MODELS.format(needed=len(varying) + 1, p=len(varying), terms=", ".join(varying),
                                                  n=n_models, dropped=dropped_text))
    # Keep a term only when it adds to the rank of the terms before it (aliased terms dropped). The terms are
    # model-level: the distinct rows have the rank of the whole design.
    distinct = x[varying].drop_duplicates().to_numpy()
    kept: list[str] = []
    rank = 0
    for column in varying:
        trial = np.linalg.matrix_rank(distinct[:, [varying.index(c) for c in kept + [column]]])
        if trial > rank:
            kept.append(column)
            rank = trial
        else:
            notes.append(f"term {column} dropped: it is a combination of the terms before it")
    x = x[kept]
    slopes = [c for c in SIZE_TERMS if c in kept] if settings.random_slopes else []
    return x, kept, references, pooled, slopes, {k: v for k, v in sizes.items() if k in kept}


def _missing_metadata(data: "pd.DataFrame") -> dict[str, set]:
    """Per metadata column, the models (or checkpoints) it is unknown for."""
    import pandas as pd

    missing = {}
    for column in METADATA_COLUMNS:
        if column in ("params_total_m", "dataset_size"):
            bad = ~pd.to_numeric(data[column], errors="coerce").gt(0)
        else:
            bad = data[column].isna() | data[column].astype(str).isin((UNKNOWN, "", "None", "nan"))
        missing[column] = set(data.loc[bad, "model"].astype(str))
    return missing


def _group_labels(data: "pd.DataFrame", groups: str) -> "pd.Series":
    test = data["test"].astype(str)
    if groups == "family" and "category" in data.columns:
        category = data["category"].fillna("").astype(str)
        test = category.where(category.str.len() > 0, test)
    return test + " | " + data["order"].astype(str)


def fit_factors(df: "pd.DataFrame", *, settings: FactorSettings = FactorSettings(),
                response: str = "value") -> FactorFit:
    """Fit the mixed model of the module docstring to ``df`` (one row per model, test and order)."""
    import numpy as np
    import pandas as pd
    import statsmodels.api as sm
    from scipy import stats

    settings = settings.check()
    needed = [c if c != "value" else response for c in FACTOR_COLUMNS]
    _check_columns(df, needed)
    notes: list[str] = []
    data = df.copy()
    data = data[np.isfinite(pd.to_numeric(data[response], errors="coerce").to_numpy(dtype=float))]
    if data.empty:
        raise DataError(MSG_NO_ROWS.format(why=f" (no finite {response})"))
    missing = _missing_metadata(data)
    complete = ~data["model"].astype(str).isin(set().union(*missing.values()))
    all_models = set(data["model"].astype(str))
    dropped_models = sorted(all_models - set(data.loc[complete, "model"].astype(str)))
    what = "; ".join(f"{c} for {len(m)}" for c, m in missing.items() if m)
    if dropped_models:
        shown = ", ".join(dropped_models[:10]) + (f" and {len(dropped_models) - 10} more" if len(dropped_models) > 10
                                                  else "")
        notes.append(f"{len(dropped_models)} model(s) left out for unknown metadata ({what}): {shown}")
    data = data[complete].reset_index(drop=True)
    if data.empty:
        raise DataError(MSG_NO_METADATA.format(columns=", ".join(METADATA_COLUMNS), n=len(all_models),
                                               missing=f"unknown {what}"))
    n_models = int(data[_unit(data)].nunique())
    dropped_text = f" ({len(dropped_models)} more lack {what})" if dropped_models else ""
    data["params_total_m"] = data["params_total_m"].astype(float)
    data["dataset_size"] = data["dataset_size"].astype(float)
    x, terms, references, pooled, slopes, sizes = _design(data, settings, notes, dropped_text)
    needed_models = len(terms) + 1
    if n_models < needed_models:
        raise DataError(MSG_TOO_FEW_MODELS.format(needed=needed_models, p=len(terms), terms=", ".join(terms),
                                                  n=n_models, dropped=dropped_text))
    groups = _group_labels(data, settings.groups)
    n_groups = int(groups.nunique())
    if n_groups < 2:
        raise DataError(MSG_TOO_FEW_GROUPS.format(n=n_groups))
    exog_re = pd.DataFrame({GROUP: np.ones(len(data))}, index=data.index)
    for column in slopes:
        exog_re[column] = x[column].to_numpy()
    y = data[response].to_numpy(dtype=float)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = sm.MixedLM(y, x, groups=groups.to_numpy(), exog_re=exog_re)
        result = model.fit(reml=True, method=["lbfgs", "powell", "cg"], maxiter=1000)
        try:
            bse_all = np.asarray(result.bse, dtype=float)
        except (ValueError, np.linalg.LinAlgError):
            bse_all = np.full(len(result.params), np.nan)
    seen: set[str] = set()
    for w in caught:
        text = str(w.message).splitlines()[0] if str(w.message) else ""
        if text and text not in seen and "encountered in" not in text and not text.startswith("Retrying"):
            seen.add(text)
            notes.append(f"statsmodels: {text}")
    k_fe = x.shape[1]
    est = np.asarray(result.fe_params, dtype=float)
    se = np.asarray(result.bse_fe, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = est / se
    p = 2 * stats.norm.sf(np.abs(z))
    q = stats.norm.ppf(0.5 + settings.level / 2)
    kinds = ["intercept" if t == "Intercept" else ("numeric" if "[" not in t else
                                                    {v: k for k, v in TERM_NAMES.items()}[t.split("[", 1)[0]])
             for t in terms]
    coef = pd.DataFrame({"term": terms, "estimate": est[:k_fe], "std_error": se[:k_fe], "z": z[:k_fe],
                         "p_value": p[:k_fe], "ci_low": est[:k_fe] - q * se[:k_fe],
                         "ci_high": est[:k_fe] + q * se[:k_fe], "kind": kinds}, columns=list(COEF_COLUMNS))
    cov_re = np.asarray(result.cov_re, dtype=float)
    names = list(exog_re.columns)
    rows = []
    jj = k_fe
    for i in range(len(names)):
        for j in range(i + 1):
            label = f"{names[i]} Var" if i == j else f"{names[j]} x {names[i]} Cov"
            se_re = math.sqrt(float(result.scale)) * bse_all[jj] if jj < len(bse_all) else math.nan
            rows.append({"component": label, "estimate": float(cov_re[i, j]), "std_error": float(se_re)})
            jj += 1
    rows.append({"component": "Scale", "estimate": float(result.scale), "std_error": math.nan})
    random = pd.DataFrame(rows, columns=list(RANDOM_COLUMNS))
    converged = bool(getattr(result, "converged", True))
    if not np.all(np.isfinite(se[:k_fe])):
        notes.append("some standard errors could not be computed (the fit is at a boundary); their p-values and "
                     "intervals are missing")
    if not converged:
        notes.append("the optimiser did not converge; read the estimates with care")
    return FactorFit(coefficients=coef, random=random, notes=tuple(notes), n_rows=int(len(data)), n_models=n_models,
                     n_groups=n_groups, terms=tuple(terms), references=references, converged=converged,
                     log_likelihood=float(result.llf), pooled=pooled, settings=settings, sizes=sizes)


def paper_table(fit: FactorFit) -> "pd.DataFrame":
    """The fit in the layout of the paper's table (statsmodels' summary): one row per fixed effect, then the
    random-effects variances and covariances, columns :data:`PAPER_COLUMNS` (NaN where the summary is blank),
    indexed by term."""
    import numpy as np
    import pandas as pd

    c = fit.coefficients
    low, high = f"[{(1 - fit.settings.level) / 2:.3g}", f"{1 - (1 - fit.settings.level) / 2:.3g}]"
    fixed = pd.DataFrame({"Coef.": c["estimate"].to_numpy(), "Std.Err.": c["std_error"].to_numpy(),
                          "z": c["z"].to_numpy(), "P>|z|": c["p_value"].to_numpy(), low: c["ci_low"].to_numpy(),
                          high: c["ci_high"].to_numpy()}, index=list(c["term"]))
    r = fit.random[fit.random["component"] != "Scale"]
    random = pd.DataFrame({"Coef.": r["estimate"].to_numpy(), "Std.Err.": r["std_error"].to_numpy()},
                          index=list(r["component"]))
    for col in fixed.columns[2:]:
        random[col] = np.nan
    out = pd.concat([fixed, random[list(fixed.columns)]])
    out.index.name = "term"
    return out


# --------------------------------------------------------------------------- correlations


def _pearson(x: "np.ndarray", y: "np.ndarray") -> tuple[float, float]:
    """Pearson's r and its two-sided p-value (t with n - 2 df); NaN when undefined."""
    import numpy as np
    from scipy import stats

    n = len(x)
    if n < 3:
        return math.nan, math.nan
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(xc @ xc) * float(yc @ yc))
    if denom == 0:
        return math.nan, math.nan
    r = float(np.clip(float(xc @ yc) / denom, -1.0, 1.0))
    if abs(r) == 1.0:
        return r, 0.0
    t = r * math.sqrt((n - 2) / (1 - r * r))
    return r, float(2 * stats.t.sf(abs(t), n - 2))


def performance_correlations(df: "pd.DataFrame", performance: str, *, by: Sequence[str] = ("test", "order"),
                             response: str = "value", min_models: int = MIN_CORRELATION_MODELS) -> "pd.DataFrame":
    """Per group of ``by``: Pearson and Spearman correlation of ``response`` with the column ``performance``
    across the models that have both, p-values, and BH q-values over the table (:data:`CORR_COLUMNS`).
    Groups with fewer than ``min_models`` models get NaN coefficients (and count in no BH family)."""
    import numpy as np
    import pandas as pd
    from scipy.stats import rankdata

    from clipprobe.analysis.significance import bh_adjust

    _check_columns(df, list(by) + [response, performance, "model"])
    rows = []
    for key, part in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        sub = part[[response, performance, "model"]].copy()
        sub[response] = pd.to_numeric(sub[response], errors="coerce")
        sub[performance] = pd.to_numeric(sub[performance], errors="coerce")
        sub = sub.dropna()
        sub = sub.groupby("model", sort=True)[[response, performance]].mean()   # one point per model
        x = sub[performance].to_numpy(dtype=float)
        y = sub[response].to_numpy(dtype=float)
        n = len(sub)
        if n >= min_models:
            r, pr = _pearson(x, y)
            rho, ps = _pearson(rankdata(x), rankdata(y))
        else:
            r = pr = rho = ps = math.nan
        rows.append(dict(zip(by, key)) | {"n_models": n, "pearson_r": r, "pearson_p": pr, "spearman_rho": rho,
                                          "spearman_p": ps})
    out = pd.DataFrame(rows, columns=list(by) + ["n_models", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"])
    out["pearson_q"] = bh_adjust(out["pearson_p"].to_numpy(dtype=float)) if len(out) else np.zeros(0)
    out["spearman_q"] = bh_adjust(out["spearman_p"].to_numpy(dtype=float)) if len(out) else np.zeros(0)
    order = list(by) + [c for c in CORR_COLUMNS if c not in ("test", "order")]
    return out[order]


def models_needed(df: "pd.DataFrame", *, settings: FactorSettings = FactorSettings()) -> int:
    """How many models (checkpoints) the mixed model would need for the families in ``df`` (before dropping
    terms)."""
    import pandas as pd

    data = df[pd.to_numeric(df["params_total_m"], errors="coerce").gt(0)
              & pd.to_numeric(df["dataset_size"], errors="coerce").gt(0)]
    if data.empty:
        return 4
    n_terms = 3   # intercept, log params, log dataset size
    for column in FACTORS:
        if column in settings.pool:
            series, _ = pool_families(data, column, min_rows=settings.min_family_rows,
                                      min_models=settings.min_family_models)
        else:
            series = data[column].astype(str)
        n_terms += max(0, series.nunique() - 1)
    return n_terms + 1


__all__ = ["COEF_COLUMNS", "CORR_COLUMNS", "FACTOR_COLUMNS", "FactorFit", "FactorSettings", "MSG_NO_METADATA",
           "MSG_TOO_FEW_MODELS", "PAPER_COLUMNS", "RANDOM_COLUMNS", "SPECS", "fit_factors", "models_needed",
           "paper_table", "performance_correlations", "pool_families"]
