"""How numbers are written in the lines and tables a person reads (search ranges, trial values).

One rule for every place that shows searched values, so that a value reads the same in the refined
ranges, the per-trial lines and the results table: integers plainly (1024, not 1.02e+03); other
numbers with 3 significant digits, or as many more as it takes for every two different numbers
shown together to print differently (0.01234 and 0.01235 are not both "0.0123").
"""

import math

from cnnlab.errors import is_number

SIGNIFICANT_DIGITS = 3  # where a float starts: enough to read, short enough to scan a column
MOST_DIGITS = 17  # 17 significant digits tell any two different floats apart


def distinct_texts(values) -> list[str]:
    """``values`` as text, in order: numbers by :func:`number_text` with the fewest digits (3 or more)
    at which every two different numbers among them print differently; anything else (a choice such
    as "relu", None, True) as ``str`` gives it."""
    numbers = {value for value in values if is_number(value)}  # 1 and 1.0 are one value, and print as "1"
    texts = {}
    for digits in range(SIGNIFICANT_DIGITS, MOST_DIGITS + 1):
        texts = {value: number_text(value, digits) for value in numbers}
        if len(set(texts.values())) == len(texts):
            break
    return [texts[value] if is_number(value) else str(value) for value in values]


def number_text(value, digits: int = SIGNIFICANT_DIGITS) -> str:
    """One number with ``digits`` significant digits: an int, or a float that is a whole number, plainly;
    a float below 1 as %g (0.0012, 1e-05); a larger one in fixed point (12345.6 -> 12346, 1.23456 -> 1.23)."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value) or abs(value) >= 1e16:  # nan, inf; beyond float's integers only an exponent is compact
        return f"{value:.{digits}g}"
    if float(value).is_integer():
        return str(int(value))
    if abs(value) < 1:
        return f"{value:.{digits}g}"  # 0.0012, 1e-05
    # No exponent above 1: 12345.6 prints as 12346 (not 1.23e+04), 1.23456 as 1.23
    decimals = max(0, digits - len(str(int(abs(value)))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
