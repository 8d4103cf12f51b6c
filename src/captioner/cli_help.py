"""Plain ``--help`` that keeps every option's name whole at any width (rich's tables cut them at 80 columns:
``--label-smoothi…``) and lists a command's options under headings by purpose."""
from __future__ import annotations

import click
from typer.core import TyperCommand

OTHER = "Other options"

TRAIN_SECTIONS: dict[str, tuple[str, ...]] = {
    "Data": ("data", "images", "val_data", "val_image_dir", "val_fraction", "val_split", "lang", "tokenizer",
             "threshold", "cache_views", "cache_dir", "num_workers"),
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
    """A command class whose help lists options under ``sections`` (heading: parameter names), in that order; an
    option named in none goes under its ``rich_help_panel``, else under 'Other options'."""
    where = {name: title for title, names in sections.items() for name in names}

    class Sectioned(TyperCommand):
        def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            groups: dict[str, list[tuple[str, str]]] = {title: [] for title in sections}
            for param in self.get_params(ctx):
                record = param.get_help_record(ctx)
                if record is not None:
                    title = where.get(param.name or "") or getattr(param, "rich_help_panel", None) or OTHER
                    groups.setdefault(title, []).append(record)
            for title, rows in groups.items():
                if rows:
                    with formatter.section(title):
                        formatter.write_dl(rows)

    return Sectioned
