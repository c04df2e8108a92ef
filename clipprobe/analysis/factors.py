"""What explains the differences between models: the upstream-factor mixed model and the correlations of
bias with downstream performance (Ghate et al., NAACL 2025). Pure functions on DataFrames, no I/O.

Input: one row per (model, test, order) with the response in ``value`` and the model's metadata
(``model``, ``params_total_m`` in millions, ``dataset_size`` in image-text pairs, ``arch_family``,
``dataset_family``); for the report's metrics ``test`` is a category and ``order`` an attribute.

:func:`fit_factors` fits the paper's linear mixed model with statsmodels' ``MixedLM`` (REML)::

    value ~ log_params + arch_family + dataset_family + log_dataset_size
    groups = test x order, random intercept and random slopes on z(log_params), z(log_dataset_size)

``log`` is log10, centred over the rows fitted (a coefficient is the change per tenfold more parameters
or pairs; centring changes only the intercept, which is then the reference families' value at the mean
log size); ``z`` is the z-score over the rows fitted. Families are treatment-coded against a reference level (default: the
dataset family with the smallest median dataset size, as the paper's cc12m; the architecture family with
the most rows). A family with fewer than ``min_family_rows`` rows (the paper: 30) or fewer than
``min_family_models`` models is pooled into ``other`` and a note says so. A model-level term that does
not vary, or that is a linear combination of terms before it (e.g. dataset size within a zoo where every
family has one size), is dropped with a note; so is its random slope. The model needs more models than
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

OTHER = "other"
MIN_FAMILY_ROWS = 30     # Ghate et al. pooled families below 30 rows
MIN_FAMILY_MODELS = 2
MIN_CORRELATION_MODELS = 3
FACTOR_COLUMNS = ("model", "value", "test", "order", "params_total_m", "dataset_size", "arch_family",
                  "dataset_family")
COEF_COLUMNS = ("term", "estimate", "std_error", "z", "p_value", "ci_low", "ci_high", "kind")
CORR_COLUMNS = ("test", "order", "n_models", "pearson_r", "pearson_p", "pearson_q", "spearman_rho", "spearman_p",
                "spearman_q")

MSG_MISSING_COLUMNS = "factor table lacks column(s) {missing}; it needs {needed}"
MSG_TOO_FEW_MODELS = ("the mixed model needs at least {needed} models with known metadata for its {p} model-level "
                      "terms ({terms}); there are {n}{dropped}")
MSG_TOO_FEW_GROUPS = "the mixed model needs at least 2 (test, order) groups; there is {n}"
MSG_NO_ROWS = "no rows to fit{why}"
MSG_REFERENCE = "reference {what} {value!r} is not among the families fitted ({valid})"
MSG_LEVEL = "level must be between 0 and 1, got {level}"
MSG_MIN = "{name} must be a whole number of at least {minimum}, got {value!r}"


@dataclasses.dataclass(frozen=True)
class FactorSettings:
    """How the mixed model is set up (see the module docstring)."""

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
        return self


@dataclasses.dataclass(frozen=True)
class FactorFit:
    """A fitted mixed model.

    ``coefficients``: one row per fixed effect (:data:`COEF_COLUMNS`; ``kind`` is ``intercept``,
    ``numeric`` or the factor's name); ``random``: the random-effects variances and the residual
    variance; ``notes``: every pooling, dropped term, dropped model and convergence warning, in words;
    ``terms``: the model-level terms fitted; ``references``: the reference level of each factor.
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


def _check_columns(df: "pd.DataFrame", needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(MSG_MISSING_COLUMNS.format(missing=", ".join(missing), needed=", ".join(needed)))


def pool_families(df: "pd.DataFrame", column: str, *, min_rows: int, min_models: int) -> tuple["pd.Series", list[str]]:
    """The family column with families below ``min_rows`` rows or ``min_models`` models renamed ``other``,
    and the names pooled (sorted)."""
    rows = df.groupby(column, sort=True).size()
    models = df.groupby(column, sort=True)["model"].nunique()
    small = sorted(f for f in rows.index if rows[f] < min_rows or models[f] < min_models)
    if not small:
        return df[column].astype(str), []
    return df[column].astype(str).where(~df[column].isin(small), OTHER), small


def _zscore(x: "np.ndarray") -> "np.ndarray":
    import numpy as np

    sd = float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
    return (x - float(np.mean(x))) / sd if sd > 0 else np.zeros_like(x)


def _design(df: "pd.DataFrame", settings: FactorSettings, notes: list[str], dropped_text: str = ""):
    """Fixed-effect design (DataFrame), its term names, references, pooled families, random-slope columns."""
    import numpy as np
    import pandas as pd

    pooled: dict[str, tuple[str, ...]] = {}
    fam = {}
    for column in ("arch_family", "dataset_family"):
        series, small = pool_families(df, column, min_rows=settings.min_family_rows,
                                      min_models=settings.min_family_models)
        fam[column] = series
        if small:
            pooled[column] = tuple(small)
            notes.append(f"{column.replace('_', ' ')} pooled as {OTHER!r} (fewer than {settings.min_family_rows} rows "
                         f"or {settings.min_family_models} models): {', '.join(small)}")
    x = pd.DataFrame(index=df.index)
    x["Intercept"] = 1.0
    # Centred (only the intercept changes; the optimiser is far better conditioned).
    log_params = np.log10(df["params_total_m"].to_numpy(dtype=float) * 1e6)
    x["log_params"] = log_params - log_params.mean()
    references: dict[str, str] = {}
    size_median = df.groupby(fam["dataset_family"])["dataset_size"].median()
    for column, given in (("arch_family", settings.reference_arch_family),
                          ("dataset_family", settings.reference_dataset_family)):
        levels = sorted(fam[column].unique())
        if given is not None:
            if given not in levels:
                raise UsageError(MSG_REFERENCE.format(what=column.replace("_", " "), value=given,
                                                      valid=", ".join(levels)))
            ref = given
        elif column == "dataset_family":
            ref = min(levels, key=lambda f: (float(size_median.get(f, math.inf)), f))
        else:
            counts = fam[column].value_counts()
            ref = min(levels, key=lambda f: (-int(counts[f]), f))
        references[column] = ref
        for level in levels:
            if level != ref:
                x[f"{column}[{level}]"] = (fam[column] == level).astype(float)
    log_size = np.log10(df["dataset_size"].to_numpy(dtype=float))
    x["log_dataset_size"] = log_size - log_size.mean()
    varying = ["Intercept"]
    for column in x.columns[1:]:
        if np.ptp(x[column].to_numpy()) > 0:
            varying.append(column)
        else:
            notes.append(f"term {column} dropped: it does not vary across the models fitted")
    n_models = int(df["model"].nunique())
    if n_models < len(varying) + 1:
        raise DataError(MSG_TOO_FEW_MODELS.format(needed=len(varying) + 1, p=len(varying), terms=", ".join(varying),
                                                  n=n_models, dropped=dropped_text))
    # Keep a term only when it adds to the rank of the terms before it (aliased terms dropped).
    kept: list[str] = []
    rank = 0
    for column in varying:
        trial = np.linalg.matrix_rank(x[kept + [column]].to_numpy())
        if trial > rank:
            kept.append(column)
            rank = trial
        else:
            notes.append(f"term {column} dropped: it is a combination of the terms before it")
    x = x[kept]
    slopes = []
    if settings.random_slopes:
        for column in ("log_params", "log_dataset_size"):
            if column in kept:
                slopes.append(column)
    return x, kept, references, pooled, slopes


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
    complete = (pd.to_numeric(data["params_total_m"], errors="coerce").gt(0)
                & pd.to_numeric(data["dataset_size"], errors="coerce").gt(0)
                & data["arch_family"].notna() & data["dataset_family"].notna()
                & ~data["dataset_family"].astype(str).eq("unknown") & ~data["arch_family"].astype(str).eq("unknown"))
    dropped_models = sorted(set(data.loc[~complete, "model"].astype(str)) - set(data.loc[complete, "model"].astype(str)))
    if dropped_models:
        shown = ", ".join(dropped_models[:10]) + (f" and {len(dropped_models) - 10} more" if len(dropped_models) > 10
                                                  else "")
        notes.append(f"{len(dropped_models)} model(s) left out for unknown parameters, dataset size or family: {shown}")
    data = data[complete].reset_index(drop=True)
    n_models = int(data["model"].nunique())
    dropped_text = f" ({len(dropped_models)} more lack metadata)" if dropped_models else ""
    if data.empty:
        raise DataError(MSG_TOO_FEW_MODELS.format(needed="?", p="?", terms="?", n=0, dropped=dropped_text))
    data["params_total_m"] = data["params_total_m"].astype(float)
    data["dataset_size"] = data["dataset_size"].astype(float)
    x, terms, references, pooled, slopes = _design(data, settings, notes, dropped_text)
    needed_models = len(terms) + 1
    if n_models < needed_models:
        raise DataError(MSG_TOO_FEW_MODELS.format(needed=needed_models, p=len(terms), terms=", ".join(terms),
                                                  n=n_models, dropped=dropped_text))
    groups = data["test"].astype(str) + " | " + data["order"].astype(str)
    n_groups = int(groups.nunique())
    if n_groups < 2:
        raise DataError(MSG_TOO_FEW_GROUPS.format(n=n_groups))
    exog_re = pd.DataFrame({"Intercept": np.ones(len(data))}, index=data.index)
    for column in slopes:
        exog_re[f"z({column})"] = _zscore(x[column].to_numpy())
    y = data[response].to_numpy(dtype=float)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = sm.MixedLM(y, x, groups=groups.to_numpy(), exog_re=exog_re)
        result = model.fit(reml=True, method=["lbfgs", "powell", "cg"])
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
    kinds = ["intercept" if t == "Intercept" else (t.split("[", 1)[0] if "[" in t else "numeric") for t in terms]
    coef = pd.DataFrame({"term": terms, "estimate": est[:k_fe], "std_error": se[:k_fe], "z": z[:k_fe],
                         "p_value": p[:k_fe], "ci_low": est[:k_fe] - q * se[:k_fe],
                         "ci_high": est[:k_fe] + q * se[:k_fe], "kind": kinds}, columns=list(COEF_COLUMNS))
    cov_re = np.asarray(result.cov_re, dtype=float)
    random = pd.DataFrame({"component": list(exog_re.columns) + ["residual"],
                           "variance": list(np.diag(cov_re)) + [float(result.scale)]})
    converged = bool(getattr(result, "converged", True))
    if not np.all(np.isfinite(se[:k_fe])):
        notes.append("some standard errors could not be computed (the fit is at a boundary); their p-values and "
                     "intervals are missing")
    if not converged:
        notes.append("the optimiser did not converge; read the estimates with care")
    return FactorFit(coefficients=coef, random=random, notes=tuple(notes), n_rows=int(len(data)), n_models=n_models,
                     n_groups=n_groups, terms=tuple(terms), references=references, converged=converged,
                     log_likelihood=float(result.llf), pooled=pooled)


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
    """How many models the mixed model would need for the families in ``df`` (before dropping terms)."""
    import pandas as pd

    data = df[pd.to_numeric(df["params_total_m"], errors="coerce").gt(0)
              & pd.to_numeric(df["dataset_size"], errors="coerce").gt(0)]
    if data.empty:
        return 4
    n_terms = 3   # intercept, log params, log dataset size
    for column in ("arch_family", "dataset_family"):
        series, _ = pool_families(data, column, min_rows=settings.min_family_rows,
                                  min_models=settings.min_family_models)
        n_terms += max(0, series.nunique() - 1)
    return n_terms + 1


__all__ = ["COEF_COLUMNS", "CORR_COLUMNS", "FACTOR_COLUMNS", "FactorFit", "FactorSettings", "MSG_TOO_FEW_MODELS",
           "fit_factors", "models_needed", "performance_correlations", "pool_families"]
