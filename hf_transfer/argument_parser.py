"""`HfArgumentParser` made strict and readable for the recipes and the CLI.

argparse's defaults suit a script written for oneself: `--learning_rat` silently means --learning_rate, an unknown
flag is a ValueError traceback, a bad value prints the whole usage. Here every bad input is a `TransferError` (one
line: the problem, then the fix), which `exit_on_user_error` prints as `prog: error: ...` with exit code 2.
The dataclass -> argparse machinery stays HfArgumentParser's; this layer only checks, explains and groups.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import re
import typing

from transformers import HfArgumentParser

from .errors import TransferError
from .runtime import LOG_LEVELS, configure_logging

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")

# The TrainingArguments flags people change, in the order `--help` lists them, with a short help for those whose
# transformers help is long (None: the field's own help). `--help_all` lists every flag with its full help.
COMMON_TRAINING_FLAGS = {
    "output_dir": None, "num_train_epochs": None, "max_steps": "Total optimizer steps; > 0 overrides the epochs.",
    "learning_rate": None, "per_device_train_batch_size": None, "per_device_eval_batch_size": None,
    "gradient_accumulation_steps": "Batches per optimizer step.", "weight_decay": None, "warmup_steps": None,
    "lr_scheduler_type": None, "max_grad_norm": "Gradient clipping norm.", "eval_strategy": None, "eval_steps": None,
    "save_strategy": None, "save_steps": None, "save_total_limit": "Keep at most N checkpoints.",
    "logging_steps": None, "resume_from_checkpoint": "A checkpoint-N folder, or True / auto: the latest complete one in --output_dir.",
    "overwrite_output_dir": None, "seed": None, "bf16": "bfloat16 mixed precision.", "fp16": "float16 mixed precision.",
    "dataloader_num_workers": None, "report_to": "Loggers: none, all, tensorboard, wandb, ...",
    "push_to_hub": "Upload the model to the Hub when it is saved.", "hub_model_id": "Hub repository for --push_to_hub.",
}

# Flags of one strategy (--strategy lora): `--help` leaves them to `--help_all`, so the common flags stay on screen.
HELP_ALL_ONLY_PREFIXES = ("lora_",)

# The transformers example scripts' names for our flags (run_image_classification.py): accepted on the command line
# and in config files, shown in the help beside the flag.
ALIASES = {"train_val_split": "validation_split"}

# A step interval given without its strategy turns the strategy on: `--save_steps 200` alone would otherwise save
# nothing (TransferTrainingArguments defaults to save_strategy="no").
STRATEGY_OF_STEPS = {"save_steps": "save_strategy", "eval_steps": "eval_strategy"}


def is_config_file(arg: str) -> bool:
    return arg.endswith(CONFIG_SUFFIXES) and not arg.startswith("-")


def first_sentence(text: str) -> str:
    """A message or help text as one line, cut after its first sentence."""
    first, *rest = [line.strip() for line in str(text).strip().splitlines() if line.strip()] or [""]
    # "... but found\n- a\n- b" reads "... but found a, b"
    text = " ".join([first, ", ".join(line.removeprefix("- ") for line in rest)]).strip()
    return re.split(r"(?<=\.)\s+(?=[A-Z`])", text)[0]


def load_config(path: str) -> dict:
    """A YAML or JSON file of `flag_name: value`; every way it can be unreadable is one line."""
    import json

    import yaml

    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        raise TransferError(f"config file {path} does not exist; check the path (it must come first)") from None
    except OSError as err:
        raise TransferError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        config = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise TransferError(f"{path} line {err.lineno}: invalid JSON ({err.msg}); fix the syntax") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or first_sentence(err)
        raise TransferError(f"{path}{where}: invalid YAML ({problem}); fix the syntax") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise TransferError(f"{path} must be a mapping of flag names to values (e.g. learning_rate: 0.001), "
                            f"not a {type(config).__name__}")
    return {str(key): value for key, value in config.items()}


def imply_step_strategies(namespace: argparse.Namespace, given: set[str]) -> None:
    for steps, strategy in STRATEGY_OF_STEPS.items():
        if steps in given and strategy not in given and hasattr(namespace, strategy):
            setattr(namespace, strategy, "steps")


def _admits(hint, kind: type) -> bool:
    """Whether a type hint such as `None | str | list[str]` accepts a `kind` (list, dict) value."""
    return hint is kind or typing.get_origin(hint) is kind or any(_admits(arg, kind) for arg in typing.get_args(hint))


def _is_switch(action: argparse.Action) -> bool:
    """`--bf16` (optionally `--bf16 false`) and `--no_x`: no metavar in help, true/false in a config file."""
    return action.nargs == 0 or (action.nargs == "?" and action.const is True)


def _expected(action: argparse.Action) -> str:
    if action.choices:
        return "one of " + ", ".join(map(str, action.choices))
    if _is_switch(action):
        return "true or false"
    return {int: "an integer", float: "a number"}.get(action.type, "a string")


# Names people bring from other trainers, which no string similarity finds.
USUAL_NAMES = {"lr": "learning_rate", "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
               "model": "model_name_or_path", "dataset": "dataset_name"}


def _did_you_mean(name: str, candidates, prefix: str = "") -> str:
    """The note " (did you mean --learning_rate?)" for a typo; "" when no name is close (compared without dashes)."""
    name, candidates = name.lstrip("-"), [candidate.lstrip("-") for candidate in candidates]
    usual = USUAL_NAMES.get(name.replace("-", "_"))
    close = [usual] if usual in candidates else difflib.get_close_matches(name, candidates, n=1, cutoff=0.7)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


class _ShowHelp(argparse.Action):
    """--help: the flags people change, grouped; --help_all: every flag."""

    def __init__(self, option_strings, dest, full=False, **kwargs):
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=argparse.SUPPRESS)
        self.full = full

    def __call__(self, parser, namespace, values, option_string=None):
        print(parser.format_help(full=self.full), end="")
        parser.exit()


class _HelpFormatter(argparse.HelpFormatter):
    """One name per flag with a short metavar (FLOAT, INT, TEXT), and the default only where it says something."""

    def __init__(self, prog, **kwargs):
        super().__init__(prog, max_help_position=32, **kwargs)

    def _format_action_invocation(self, action):
        if _is_switch(action):
            return action.option_strings[0]
        if action.choices:
            name = "{" + ",".join(map(str, action.choices)) + "}" if len(action.choices) <= 4 else "NAME"
        else:
            name = {int: "INT", float: "FLOAT"}.get(action.type, "TEXT")
        return f"{action.option_strings[0]} {name}" + (" ..." if action.nargs in ("+", "*") else "")

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        says_default = "default" in text.lower()
        if default not in (None, "", [], argparse.SUPPRESS) and default is not False and not says_default:
            text += " (default: %(default)s)"
        return text


class RecipeArgumentParser(HfArgumentParser):
    """`HfArgumentParser` without prefix abbreviations, with one-line errors, config files and a grouped --help."""

    def __init__(self, dataclass_types, prog: str | None = None):
        super().__init__(dataclass_types, prog=prog, usage="%(prog)s [config.yaml] [flags]", allow_abbrev=False,
                         add_help=False, formatter_class=_HelpFormatter,
                         description="config.yaml (or .json): keys are flag names; flags after it override them.")
        self.add_argument("-h", "--help", action=_ShowHelp)
        self.add_argument("--help_all", action=_ShowHelp, full=True)
        self.hints = {name: hint for dtype in self.dataclass_types
                      for name, hint in typing.get_type_hints(dtype).items()}  # field name -> type, as declared
        self.training_type = next((t for t in self.dataclass_types if _is_training_arguments(t)), None)
        # A shared dataclass may hold flags a job does not read (the probe has no augmentation): the job's own
        # dataclass names them in `UNREAD_FLAGS` (flag -> why), and they are neither shown nor accepted.
        self.unread = {name: why for dtype in self.dataclass_types
                       for name, why in getattr(dtype, "UNREAD_FLAGS", {}).items()}
        self.unread_defaults = {}
        for name in self.unread:
            self._drop_flag(name)
        # --log_level and --disable_tqdm for every job: TrainingArguments has them; the others get them here
        self.logging_flags = {}
        if "log_level" not in self.hints:
            self.add_argument("--log_level", choices=["passive", *LOG_LEVELS], default="passive", type=str.lower,
                              help="Messages printed: debug, info, warning, error (errors only) or critical; passive "
                                   "keeps the libraries' own levels (hf_transfer's progress: info).")
            self.add_argument("--disable_tqdm", type=_true_or_false, nargs="?", const=True, default=False,
                              metavar="BOOL", help="Turn off the progress bars.")
        for alias, name in ALIASES.items():
            action = self._option_string_actions.get(f"--{name}")
            if action is not None:
                action.option_strings.append(f"--{alias}")
                self._option_string_actions[f"--{alias}"] = action
                action.help = f"{action.help} (alias: --{alias})"
        self.config_name = None  # set while a config file's values are parsed: errors then name its keys
        self.given = set()  # the flags given on the command line or in the config file
        self.config_values = {}  # lists and mappings from a config file that argparse cannot express as flags

    def _drop_flag(self, name: str) -> None:
        action = self._option_string_actions.get(f"--{name}")
        if action is None:
            return
        self.unread_defaults[name] = action.default  # the dataclass still gets its field, at the default
        self._remove_action(action)
        for group in self._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)
        for option in action.option_strings:
            self._option_string_actions.pop(option, None)

    # ---- config files

    def read_config(self, path: str) -> list[str]:
        """A config file's values as flags, checked here so that errors name the file and its keys."""
        config = load_config(path)
        unread = [key for key in config if key in self.unread]
        if unread:
            raise TransferError(f"{path}: " + self._unread_message(unread))
        unknown = [key for key in config if self._action(key) is None]
        if unknown:
            raise TransferError(self._unknown_keys(unknown, config, path))
        flags = [flag for key, value in config.items() for flag in self._config_flags(key, value, path)]
        self.config_name = path
        try:
            super().parse_known_args(flags)
        finally:
            self.config_name = None
        return flags

    def _action(self, name: str) -> argparse.Action | None:
        action = self._option_string_actions.get(f"--{name}")
        return action if action is not None and action.dest in self.hints else None

    def _unknown_keys(self, unknown: list[str], config: dict, path: str) -> str:
        keys = [option[2:] for option, action in self._option_string_actions.items() if action.dest in self.hints]

        def note(key):
            if isinstance(config[key], dict):  # a `model:` section: the file is flat, one key per flag
                return " (a section: put its keys at the top level)"
            return _did_you_mean(key, keys)

        if len(unknown) == 1:
            return f"unknown key '{unknown[0]}' in {path}" + (note(unknown[0]) or "; keys are the flag names (--help)")
        return f"unknown keys in {path}: " + ", ".join(f"'{key}'{note(key)}" for key in unknown)

    def _config_flags(self, key: str, value, path: str) -> list[str]:
        action = self._action(key)
        if value is None:  # `key: null` keeps the default
            return []
        kind = "mapping" if isinstance(value, dict) else "list" if isinstance(value, list) else None
        if kind == "list" and value and action.nargs in ("+", "*"):
            return [f"--{key}", *map(str, value)]
        if kind:
            if _admits(self.hints[action.dest], type(value)):  # e.g. report_to: [none], lr_scheduler_kwargs: {...}
                self.config_values[action.dest] = value
                return []
            raise TransferError(f"{key} in {path}: expected {_expected(action)}, got the {kind} {value}")
        if action.nargs == 0:  # a `--no_x` switch takes no value: true gives it, false leaves the default
            return [f"--{key}"] if value else []
        if value is False and not _is_switch(action):  # YAML 1.1 reads `save_strategy: no` as false
            value = "no"
        return [f"--{key}={value}"]  # "=": a value such as "-head" must not read as a flag

    # ---- parsing

    def parse_into_dataclasses(self, argv: list[str]) -> tuple:
        """The dataclasses, with the job's logging settings applied before anything loads."""
        parsed = self.parse_args_into_dataclasses(args=argv)
        training = next((p for p in parsed if _is_training_arguments(type(p))), None)
        given = "disable_tqdm" in self.given
        if training is not None:
            _, training.disable_tqdm = configure_logging(training.log_level, training.disable_tqdm, given)
        else:
            configure_logging(self.logging_flags.get("log_level"), self.logging_flags.get("disable_tqdm"), given)
        return parsed

    def parse_known_args(self, args=None, namespace=None):
        """argparse's parse, plus: unknown flags refused, config lists/mappings applied, step strategies implied."""
        namespace = argparse.Namespace(**self.config_values) if namespace is None else namespace
        namespace, extras = super().parse_known_args(args, namespace)
        for name, default in self.unread_defaults.items():
            setattr(namespace, name, default)
        if "log_level" not in self.hints:  # the parser's own flags: not in any dataclass
            self.logging_flags = {name: getattr(namespace, name) for name in ("log_level", "disable_tqdm")
                                  if hasattr(namespace, name)}
            for name in self.logging_flags:
                delattr(namespace, name)
        if extras:
            raise TransferError(self._unknown_flags(extras))
        given = {self._option_string_actions[flag].dest for flag in self._flags_in(args or [])}
        given |= set(self.config_values)
        self.given = given
        imply_step_strategies(namespace, given)
        return namespace, extras

    def _flags_in(self, args: list[str]) -> list[str]:
        return [arg.split("=")[0] for arg in args if arg.split("=")[0] in self._option_string_actions]

    def _unknown_flags(self, extras: list[str]) -> str:
        options = [option for option, action in self._option_string_actions.items() if action.dest in self.hints]
        unknown, stray = [], []
        for arg in extras:
            if arg.startswith("-") and not re.fullmatch(r"-[\d.e+-]+", arg):
                unknown.append(arg.split("=")[0])
            elif not unknown:  # values after an unknown flag are its own
                stray.append(arg)
        problems = []
        unread = [flag for flag in unknown if flag[2:] in self.unread]
        if unread:
            problems.append(self._unread_message([flag[2:] for flag in unread]))
            unknown = [flag for flag in unknown if flag not in unread]
        if unknown:
            notes = [_did_you_mean(flag, options, prefix="--") for flag in unknown]
            named = ", ".join(flag + note for flag, note in zip(unknown, notes))
            problems.append(f"unknown option{'s' * (len(unknown) > 1)} {named}"
                            + ("" if all(notes) else "; --help lists the flags"))
        if stray:
            hint = ("a config file must come first" if any(map(is_config_file, stray))
                    else "flags start with --; a config file comes first and ends in .yaml, .yml or .json")
            problems.append(f"unexpected argument{'s' * (len(stray) > 1)} {' '.join(map(repr, stray))} ({hint})")
        return "; ".join(problems)

    def _unread_message(self, names: list[str]) -> str:
        return "; ".join(f"--{name} does not apply here: {self.unread[name]}" for name in names)

    def error(self, message: str):
        """argparse's own errors (a bad value, a missing one): one line naming the flag, or the config file's key."""
        if message.startswith("argument "):
            names, _, problem = message[len("argument "):].partition(": ")
            flag = names.split("/")[0]
            problem = re.sub(r"^(invalid \w+ value|invalid choice): ", r"\1 ", problem)
            message = f"{flag[2:]} in {self.config_name}: {problem}" if self.config_name else f"{flag}: {problem}"
        raise TransferError(" ".join(message.split()))

    # ---- help

    def format_help(self, full: bool = False) -> str:
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, [], [])
        formatter.add_text(self.description)
        for title, actions in self._help_sections(full):
            formatter.start_section(title)
            formatter.add_arguments(actions)
            formatter.end_section()
        if "log_level" not in self.hints:
            formatter.start_section("logging")
            formatter.add_arguments([a for a in self._actions if a.dest in ("log_level", "disable_tqdm")])
            formatter.end_section()
        if self.training_type and not full:
            formatter.add_text("all other TrainingArguments flags: --help_all")
        return formatter.format_help()

    def _help_sections(self, full: bool) -> list[tuple[str, list[argparse.Action]]]:
        """Model, data and transfer (or probe) flags first, then training: the common flags, or all with --help_all."""
        sections, training = [], []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            actions = [action for action in self._actions if action.dest in names]
            if dtype is not self.training_type:
                if not full:
                    actions = [a for a in actions if not a.dest.startswith(HELP_ALL_ONLY_PREFIXES)]
                sections.append((dtype.__name__.removesuffix("Arguments").lower(), actions))
                continue
            order = list(COMMON_TRAINING_FLAGS)
            common = sorted((a for a in actions if a.dest in COMMON_TRAINING_FLAGS), key=lambda a: order.index(a.dest))
            training.append(("training (common)", common if full else list(map(_brief, common))))
            if full:
                training.append(("training (all other TrainingArguments flags)",
                                 [a for a in actions if a.dest not in COMMON_TRAINING_FLAGS]))
        return sections + training


def _true_or_false(value: str) -> bool:
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _brief(action: argparse.Action) -> argparse.Action:
    brief = copy.copy(action)
    brief.help = COMMON_TRAINING_FLAGS[action.dest] or action.help
    return brief


def _is_training_arguments(dtype) -> bool:
    # by name: importing transformers.TrainingArguments costs ~3 s that the probe recipe should not pay
    return any(base.__name__ == "TrainingArguments" for base in dtype.__mro__)
