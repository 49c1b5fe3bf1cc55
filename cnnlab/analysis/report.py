"""Human-readable tables and the architecture-comparison plot for :mod:`cnnlab.analysis`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from rich.table import Table

from cnnlab.analysis.summary import CONVENTIONS, UNITS, Summary, unit_factor
from cnnlab.errors import counted, first_few, noun_for
from cnnlab.io import atomic_path, check_output_file, check_output_folder

__all__ = ["UNITS", "comparison_rows", "human_bytes", "human_count", "save_comparison_plot", "summary_table",
           "totals_lines", "unit_factor"]


def human_bytes(value: float) -> str:
    """Bytes in B, KB, MB or GB (1 KB = 1024 B, as the lecture's table)."""
    if abs(value) < 1024:
        return f"{value:,.0f} B"
    for unit in ("KB", "MB", "GB"):
        value /= 1024
        if abs(value) < 1024 or unit == "GB":
            break
    return f"{value:,.1f} {unit}"


def human_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:,.2f}{unit}"
    return f"{value:,.0f}"


def summary_table(result: Summary, depth: Optional[int] = None, units: str = "macs") -> Table:
    factor = unit_factor(units)
    label = "FLOPs" if units == "flops" else "MACs"
    size = "x".join(map(str, result.input_size))
    table = Table(title=f"{result.model_name} at {size}, batch {result.batch}", show_footer=False)
    for column, justify in (
        ("layer", "left"), ("type", "left"), ("output", "left"), ("memory", "right"), ("params", "right"),
        (label, "right"), ("pool ops", "right"), ("elem ops", "right"), ("RF", "right"), ("jump", "right"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # long names wrap, never cut to "…"
    for row in result.rows(depth):
        rf = row.receptive_field
        table.add_row(
            ("  " * max(row.depth - 1, 0)) + (row.name or "(model)"),
            _type_text(row),
            "x".join(map(str, row.output_shape)) if row.output_shape else "-",
            human_bytes(row.memory) if row.memory else "",
            f"{row.params:,}" if row.params else "",
            f"{row.macs * factor:,}" if row.macs else "",
            f"{row.pool_ops:,}" if row.pool_ops else "",
            f"{row.element_ops:,}" if row.element_ops else "",
            str(rf) if rf is not None else "",
            ("x".join(map(str, rf.jump)) if rf.jump[0] != rf.jump[1] else str(rf.jump[0])) if rf is not None else "",
        )
    return table


def _type_text(row) -> str:
    """The type column: a module the forward never called is marked, and told apart from dead weights when
    the forward read its weights all the same (torch's MultiheadAttention and its out_proj)."""
    if row.ran:
        return row.type
    label = "used, not called" if row.weights_read else "not run"
    return f"({label})" if row.type == "(not run)" else f"{row.type} ({label})"


def totals_lines(result: Summary, units: str = "macs") -> list[str]:
    factor = unit_factor(units)
    label = "FLOPs" if units == "flops" else "MACs"
    lines = [
        f"parameters           {result.total_params:,} (trainable {result.trainable_params:,}, "
        f"frozen {result.frozen_params:,})",
        f"conv+linear {label:<8} {result.macs * factor:,} ({human_count(result.macs * factor)})",
        f"pooling ops          {result.pool_ops:,}",
        f"element ops          {result.element_ops:,}",
        f"all ops              {result.macs * factor + result.pool_ops + result.element_ops:,}",
        f"forward activations  {human_bytes(result.activation_memory)} (batch {result.batch}, fp32)",
        f"training memory      SGD-momentum {human_bytes(result.training_memory('sgd'))}, "
        f"AdamW {human_bytes(result.training_memory('adamw'))} (activations + params + grads + state)",
        f"conventions          {CONVENTIONS}",
    ]
    if result.unused_params:
        # Named, so that weights the forward never reads (a head left over, a branch skipped) are not silently
        # counted with the rest
        names = list(result.unused_params)
        shown = first_few(names, 3)
        lines.insert(1, f"unused parameters    {sum(result.unused_params.values()):,} in "
                        f"{counted(len(names), 'tensor')} no operation of the forward read: {shown}")
    if result.script_modules:
        # Said, so that one row holding a whole scripted network is not read as a network of one layer
        modules = result.script_modules
        runs, owner = ("runs its", "its") if len(modules) == 1 else ("run their", "each one's")
        lines.insert(1, f"TorchScript          {', '.join(modules)} {runs} layers in the TorchScript interpreter, where "
                        f"module hooks do not fire, so {owner} operations and parameters are counted in its own row "
                        "(the totals are exact); analyse the module before torch.jit.script or torch.jit.trace for one "
                        "row per layer")
    if result.field_not_followed:
        # Said, so that the rows with an empty RF column are not read as a field of nothing
        layers = noun_for(len(result.field_not_followed), "layer")
        lines.insert(-1, f"receptive field      not followed past {layers} {', '.join(result.field_not_followed)} "
                         "(upsampling, pixel shuffles, unpooling, transposed convolutions, layers that are not "
                         "2-d, or a strided slice of a tensor whose H and W it cannot place): the rows after "
                         f"{'it' if len(result.field_not_followed) == 1 else 'them'} have no RF")
    return lines


def comparison_rows(results: Sequence[Summary], units: str = "macs") -> list[dict]:
    """One row per model, its counts as ``Summary.to_dict`` gives them: ``macs`` (doubled with ``units="flops"``),
    ``flops`` as well with flops, and ``units`` saying which, so a script reads the same keys from both."""
    factor = unit_factor(units)
    rows = []
    for r in results:
        row = {"model": r.model_name, "input_size": list(r.input_size), "params": r.total_params, "units": units,
               "macs": r.macs * factor}
        if units == "flops":
            row["flops"] = row["macs"]
        row["activation_memory_bytes"] = r.activation_memory
        row["training_memory_bytes_sgd"] = r.training_memory("sgd")
        rows.append(row)
    return rows


def save_comparison_plot(results: Sequence[Summary], path: Path, units: str = "macs") -> None:
    """Scatter of compute vs parameters, bubble area proportional to activation memory.

    Written to a temporary file next to ``path`` and renamed, so a failed run leaves no half file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factor = unit_factor(units)
    path = check_output_file(path, "--plot", (".png",))
    gops = [r.macs * factor / 1e9 for r in results]
    params = [r.total_params / 1e6 for r in results]
    memory = [r.activation_memory / 2**20 for r in results]
    biggest = max(memory) or 1.0
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.scatter(gops, params, s=[2000 * m / biggest + 20 for m in memory], alpha=0.5)
    for r, x, y, m in zip(results, gops, params, memory):
        ax.annotate(f"{r.model_name}\n{m:.1f} MB", (x, y), ha="center", va="center", fontsize=8)
    ax.set_xlabel(f"G{'FLOPs' if units == 'flops' else 'MACs'} (conv + linear)")
    ax.set_ylabel("parameters (M)")
    ax.set_title("Compute vs parameters; bubble area = forward activation memory")
    ax.grid(alpha=0.3)
    check_output_folder(path.parent, "--plot", create=True)
    try:
        with atomic_path(path, "the plot") as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
