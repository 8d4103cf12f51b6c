"""Plain ``--help`` that keeps every option's name whole at any width (rich's tables cut them at 80 columns:
``--label-smoothi…``) and lists a command's options under headings by purpose."""
from __future__ import annotations

import textwrap

import click
from typer.core import TyperCommand

OTHER = "Other options"
NAME_WIDTH = 30  # an option's names longer than this go on a line of their own, its help below them

SEARCH = ("beam", "max_len", "length_penalty", "block_ngram", "no_bad_endings", "sample", "temperature", "top_k",
          "top_p", "n", "seed", "groups", "diversity")
CAPTION_SECTIONS: dict[str, tuple[str, ...]] = {
    "Model": ("model", "runtime", "precision"), "Search": SEARCH,
    "Output": ("n_best", "json", "json_attention", "grid", "attention"),
}
EVALUATE_SECTIONS: dict[str, tuple[str, ...]] = {
    "Data": ("data", "images", "split", "cache_dir"), "Model": ("model", "runtime", "precision"), "Search": SEARCH,
    "Scoring and output": ("java", "spice", "out"),
}

TRAIN_SECTIONS: dict[str, tuple[str, ...]] = {
    "Data": ("data", "images", "val_data", "val_image_dir", "val_fraction", "val_split", "lang", "tokenizer",
             "threshold", "cache_views", "cache_dir", "encode_batch_size", "num_workers"),
    "Model": ("decoder", "backbone", "encoder_weights", "image_size", "grid", "output_stride", "embed_size",
              "hidden_size", "num_layers", "attention_size", "context_size", "dropout", "batch_norm", "fine_tune",
              "init"),
    "Training": ("epochs", "batch_size", "lr", "min_lr", "scheduler", "weight_decay", "clip", "ema", "batching",
                 "attention_penalty", "label_smoothing", "scheduled_sampling", "word_dropout", "train_max_len",
                 "scst", "scst_samples", "scst_baseline", "seed", "accelerator", "precision", "devices", "num_nodes",
                 "resume", "force"),
    "Search and validation": ("max_len", "eval_every", "val_images", "early_stop"),
    "Output": ("out", "progress"),
}


def sectioned(sections: dict[str, tuple[str, ...]]) -> type[TyperCommand]:
    """A command class whose help lists its arguments, then its options under ``sections`` (heading: parameter
    names), in that order; an option named in none goes under its ``rich_help_panel``, else under 'Other options'."""
    where = {name: title for title, names in sections.items() for name in names}

    class Sectioned(TyperCommand):
        def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            groups: dict[str, list[tuple[str, str]]] = {"Arguments": [], **{title: [] for title in sections}}
            for param in self.get_params(ctx):
                record = param.get_help_record(ctx)
                if record is not None:
                    title = "Arguments" if param.param_type_name == "argument" else where.get(param.name or "") \
                        or getattr(param, "rich_help_panel", None) or OTHER
                    groups.setdefault(title, []).append(record)
            for title, rows in groups.items():
                if rows:
                    with formatter.section(title):
                        write_rows(formatter, rows)

    return Sectioned


def write_rows(formatter: click.HelpFormatter, rows: list[tuple[str, str]]) -> None:
    """click's definition list, but help text wraps at spaces only: ``--val-fraction``, ``show-tell`` or a path in
    it stay whole (click's wrap breaks after hyphens)."""
    names = min(max(len(name) for name, _ in rows), NAME_WIDTH) + 2
    indent = " " * formatter.current_indent
    width = max((formatter.width or 80) - formatter.current_indent - names, 20)
    for name, help_text in rows:
        lines = textwrap.wrap(help_text, width, break_on_hyphens=False, break_long_words=False) or [""]
        if len(name) + 2 > names:  # the names on their own line
            formatter.write(f"{indent}{name}\n")
            lines = [line for line in lines if line]
            formatter.write("".join(f"{indent}{' ' * names}{line}\n" for line in lines))
            continue
        formatter.write(f"{indent}{name:<{names}}{lines[0]}".rstrip() + "\n")
        formatter.write("".join(f"{indent}{' ' * names}{line}\n" for line in lines[1:]))
