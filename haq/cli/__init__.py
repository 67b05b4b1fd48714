"""The ``haq`` command line: search, sweep, eval, cost, table, prune, export, hw list, models list.

User mistakes end with one line on stderr and exit code 2, never a traceback. Flags that
several commands take are declared once, in the parent parsers below.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from haq.cli.args import EXIT_USAGE, UsageError, model_weights, nonnegative_int, positive_int, train_images
from haq.cli.run import cmd_eval, cmd_search, cmd_sweep, policy_settings
from haq.cli.table import cmd_table
from haq.cli.tools import cmd_cost, cmd_export, cmd_hw_list, cmd_models_list, cmd_prune

__all__ = ["build_parser", "main", "policy_settings"]


def _parent(*flags: tuple[tuple[str, ...], dict]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    for names, kwargs in flags:
        parser.add_argument(*names, **kwargs)
    return parser


def _model(default: str | None = None) -> argparse.ArgumentParser:
    # parents share their actions: a command with another default gets a parent of its own
    return _parent((("--model",), {"default": default,
                                   "help": "model name (haq models list) or package.module:factory"}))


def _hw(default: str | None = None) -> argparse.ArgumentParser:
    return _parent((("--hw",), {"default": default, "help": "hardware cost model (haq hw list) or package.module:Class"}),
                   (("--hw-param",), {"dest": "hw_param", "action": "append", "metavar": "KEY=VALUE",
                                      "help": "override a hardware model parameter (repeatable), e.g. batch=4"}))


DATA = _parent((("--weights",), {"help": "local state-dict file for the model"}),
               (("--dataset",), {"help": "digits | cifar10 | imagenet | imagenet100 | folder (class-per-folder images at "
                                        "--data-root) | package.module:function (default: the model's)"}),
               (("--data-root",), {"dest": "data_root", "help": "local folder of the dataset (never downloaded)"}))
POLICY = _parent((("--policy",), {"help": "policy file (JSON or CSV) from a search"}),
                 (("--uniform",), {"help": "a uniform policy such as w4a4 (default w8a8)"}))
FINETUNE = _parent(
    (("--finetune-epochs",), {"dest": "finetune_epochs", "type": int,
                              "help": "finetune epochs per evaluation (default: the run's, else 1)"}),
    (("--seed",), {"type": int, "help": "seed (default: the run's, else 0)"}))
TRAIN_IMAGES = _parent((("--train-images",), {
    "dest": "train_images", "type": train_images, "metavar": "N|all",
    "help": "training images an epoch: 'all', or the first N shuffled (default: the run's, else all); "
            "'--finetune-epochs 3 --train-images all' on a table search's policy is the paper's final finetune"}))
DEVICE = _parent((("--device",), {"help": "cpu, cuda, cuda:1, ... (default: the run's or the scale's, else cpu)"}))
DISTILL = _parent((("--distill",), {"action": "store_true",
                                    "help": "knowledge distillation from the float model in every finetune"}))
RAY = _parent((("--workers",), {"type": int, "help": "evaluate this many policies at once on Ray workers (default 1)"}),
              (("--ray-address",), {"dest": "ray_address",
                                    "help": "Ray cluster to join (default: a local Ray instance)"}))
JSON = _parent((("--json",), {"action": "store_true", "help": "print one JSON object"}))
PLUGINS = _parent((("--allow-plugins",), {"dest": "allow_plugins", "action": "store_true",
                                          "help": "let a run folder's config.yaml import the model or hardware "
                                                  "plugin (module:attr) it names: plugins are code"}))


SEARCH_METHODS = ("ddpg", "ilp", "random")
"""``--method`` choices: `haq.config.METHODS` (named here so that ``haq --help`` loads no torch)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="haq", description="Hardware-aware automated mixed-precision quantization (HAQ).")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", parents=[_model(), DATA, _hw(), FINETUNE, DEVICE, DISTILL, RAY, PLUGINS],
                       help="search a mixed-precision policy (defaults: the embedded digits model)")
    s.add_argument("--config", help="YAML file with SearchConfig keys; flags override it")
    s.add_argument("--constraint", choices=["latency", "energy", "size"])
    s.add_argument("--budget", help="ratio of the w8a8 cost (0.5) or a uniform policy to match (w4a4)")
    s.add_argument("--no-held-out", dest="held_out", action="store_false",
                   help="skip measuring the best and the uniform policies on the held-out test split at the end "
                        "(one more finetune each)")
    s.add_argument("--method", choices=SEARCH_METHODS,
                   help="ilp (default: measured per-layer sensitivity and an integer program, its allocations "
                        "finetuned once each), ddpg (HAQ's agent, the paper's method) or random (random actions, the "
                        "same budget enforcement)")
    s.add_argument("--episodes", type=int, help="episodes in total, warm-up included (default 100); with --method ilp, "
                                                 "the integer program's allocations to finetune")
    s.add_argument("--warmup", type=int, help="random warm-up episodes of --method ddpg (default 20)")
    s.add_argument("--out", help="run directory (default runs/<time>-<model>-<hw>)")
    s.add_argument("--min-bits", dest="min_bits", type=int)
    s.add_argument("--max-bits", dest="max_bits", type=int)
    s.add_argument("--pin-first-last", dest="pin_first_last", action=argparse.BooleanOptionalAction, default=None,
                   help="hold the first and last layer at max bits")
    s.add_argument("--reward-measure", dest="reward_measure", choices=["top1", "p_true"],
                   help="what the reward reads on search-validation: top1 (default, the paper's) or p_true, the mean "
                        "true-class probability (less noisy on small splits)")
    s.add_argument("--fill-budget", dest="fill_budget", action=argparse.BooleanOptionalAction, default=None,
                   help="after budget enforcement, raise the lowest bitwidths while the budget allows, so no policy "
                        "leaves budget unspent (not the paper's; default off)")
    s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the quantized model once; every policy reuses it (finetune.compile; "
                        "default: on with --device cuda, off on CPU)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted search from its last complete episode")
    s.set_defaults(func=cmd_search)

    sw = sub.add_parser("sweep", parents=[_model(), DATA, _hw(), FINETUNE, DEVICE, DISTILL],
                        help="run a method over a range of budgets: held-out top-1 against cost, uniform bits beside",
                        description="One search per budget (each in OUT/<budget>/, resumed if interrupted), what each "
                        "returns measured on the held-out test split, and the uniform policies beside them: OUT/sweep.csv "
                        "and OUT/sweep.png; --max-drop picks the cheapest policy within that many points of float "
                        "top-1 on search-validation (OUT/pick.json).")
    sw.add_argument("--budgets", nargs="+", required=True, help="budgets as --budget takes them, e.g. w3a3 w3a4 w4a4 0.6")
    sw.add_argument("--out", required=True, help="the sweep folder")
    sw.add_argument("--config", help="YAML file with SearchConfig keys; flags override it")
    sw.add_argument("--constraint", choices=["latency", "energy", "size"])
    sw.add_argument("--method", choices=SEARCH_METHODS, help="ilp (default), ddpg or random, as for haq search")
    sw.add_argument("--episodes", type=int, help="episodes of each search (default 100)")
    sw.add_argument("--max-drop", dest="max_drop", type=float,
                    help="pick the cheapest policy within this many top-1 points of float on search-validation")
    sw.set_defaults(func=cmd_sweep)

    e = sub.add_parser("eval", parents=[_model(), DATA, _hw(), POLICY, FINETUNE, TRAIN_IMAGES, DEVICE, DISTILL, JSON, PLUGINS],
                       help="quantize with a policy, finetune, report accuracy and cost",
                       description="A policy file in a run directory is evaluated with that run's settings "
                       "(config.yaml beside it: model, weights, data, quantization, finetune, seed, hardware), "
                       "which reproduces its reported top-1; the flags override them.")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("cost", parents=[_model("digits-mbv2"), _hw("bismo-edge"), POLICY, JSON], help="per-layer and total hardware cost of a policy")
    c.add_argument("--input-shape", dest="input_shape", help="C,H,W for a model given as module:factory")
    c.add_argument("--num-classes", dest="num_classes", type=positive_int,
                   help="classifier outputs (default: the model's; 100 prices mobilenet_v2 on haq-mbv2-cloud)")
    c.add_argument("--csv", help="also write the per-layer costs to this CSV file")
    c.set_defaults(func=cmd_cost)

    t = sub.add_parser("table", parents=[DEVICE, DISTILL, RAY],
                       help="reproduce one of the paper's tables (latency, energy, size)")
    t.add_argument("table", help="latency | energy | size (haq/tables/configs/<table>.yaml), or a YAML in --config-dir")
    t.add_argument("--scale", choices=["mini", "paper"], default="mini",
                   help="mini: the digits models on CPU (minutes a search, 20 minutes to hours a table); "
                        "paper: ImageNet-100 and the paper's models on a GPU")
    t.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the scale's)")
    t.add_argument("--models", nargs="+", help="only these of the scale's models (default: all)")
    t.add_argument("--episodes", type=int, help="override the episodes of every search")
    t.add_argument("--data-root", dest="data_root", help="local ImageNet folder (paper scale)")
    t.add_argument("--jobs", type=positive_int, default=1,
                   help="run this many searches at once, each in its own process with cores/N threads (default 1)")
    t.add_argument("--weights", nargs="+", action="extend", type=model_weights, metavar="MODEL=PATH",
                   help="a local weights file for each of the scale's models that has no training of its own "
                   "(the paper scale's ImageNet networks)")
    t.add_argument("--runs", default="runs/tables", help="where the searches' run directories go")
    t.add_argument("--results", help="where the CSV, markdown and figures go (default experiments/results under the working directory; "
                   "RUNS/results when --models, --seeds, --episodes or --refits is given)")
    t.add_argument("--config-dir", dest="config_dir", help="folder of your own table YAMLs (default: the shipped haq/tables/configs)")
    t.add_argument("--refits", type=nonnegative_int,
                   help="further finetunes of each row's policy, measured held out (default: the table YAML's "
                        "`refits`, 4); 0 for a quick look")
    t.add_argument("--render-only", action="store_true", help="re-render the markdown from the CSV")
    t.set_defaults(func=cmd_table)

    pr = sub.add_parser("prune", parents=[_model("digits-mbv2"), DATA], help="gradual magnitude pruning (Zhu & Gupta 2017) of a trained model")
    pr.add_argument("--sparsity", type=float, default=0.75, help="final fraction of zero weights per layer")
    pr.add_argument("--epochs", type=int, default=10)
    pr.add_argument("--lr", type=float, default=0.02)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--out", required=True, help="where to write the pruned state dict (.pt)")
    pr.set_defaults(func=cmd_prune)

    ex = sub.add_parser("export", parents=[_model(), DATA, FINETUNE, TRAIN_IMAGES, JSON, PLUGINS],
                        help="export a policy's quantized model (PyTorch integer artifact + ONNX Q/DQ)",
                        description="A policy file in a run directory is quantized and finetuned with that run's "
                        "settings (config.yaml beside it); the flags override them.")
    ex.add_argument("--policy", required=True, help="policy file (JSON or CSV), e.g. a run's best_policy.json")
    ex.add_argument("--out", required=True, help="output directory")
    ex.set_defaults(func=cmd_export)

    hw = sub.add_parser("hw", help="hardware cost models")
    hl = hw.add_subparsers(dest="hw_command", required=True).add_parser(
        "list", parents=[JSON], help="list the hardware cost models")
    hl.set_defaults(func=cmd_hw_list)

    m = sub.add_parser("models", help="networks")
    ml = m.add_subparsers(dest="models_command", required=True).add_parser(
        "list", parents=[JSON], help="list the registered networks")
    ml.set_defaults(func=cmd_models_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # training a registered model on first use takes a minute or two: say so, even without -v
    logging.getLogger("haq.models").setLevel(logging.INFO)
    try:
        return int(args.func(args))
    except (UsageError, ValueError, TypeError, OSError) as exc:  # user input: flags, files, plugins, devices, data
        if args.debug:
            raise
        print(f"haq {args.command}: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted; continue with: haq search --resume <run directory>", file=sys.stderr)
        return 130

