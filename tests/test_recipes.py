"""--recipe: a preset replaces a stage's defaults (never a flag given), applies by itself to
runs descending from SmolLM2, and leaves the built-in model's defaults exactly as they were."""
import json

import pytest

from minipost import cli, recipes


def parse(stage, *extra):
    return vars(cli.parse(["--stage", stage, "--out", "/tmp/unused-out", *extra]))


def stage_defaults(stage):
    """Every flag's default as the stage itself declares it (no recipe)."""
    parser = cli.build_parser(stage)
    return {a.dest: parser.get_default(a.dest) for a in parser._actions if a.dest != "help"}


# bon checks its --reward-model run while parsing (it has no recipe either)
@pytest.mark.parametrize("stage", [s for s in cli.STAGES if s not in ("all", "bon")])
def test_without_a_real_model_every_default_is_the_stages_own(stage):
    args = parse(stage, "--init", "/tmp/no-such-run") if cli.STAGES[stage][1] else parse(stage)
    assert args["recipe"] == "none"
    for dest, want in stage_defaults(stage).items():
        if dest not in ("out", "init", "stage", "recipe", "warmup"):  # parse fills in --out/--init
            assert args[dest] == want, dest


@pytest.mark.parametrize("stage", ["sft", "dpo", "rm", "grpo"])
def test_init_smollm2_takes_the_recipes_defaults(stage):
    args = parse(stage, "--init", "smollm2")
    assert args["recipe"] == "smollm2"
    preset = recipes.RECIPES["smollm2"][stage]
    assert {k: args[k] for k in preset} == preset


def test_a_flag_on_the_command_line_wins_over_the_recipe():
    args = parse("sft", "--init", "smollm2", "--lr", "7e-4", "--peft", "none", "--lora-r", "4")
    assert (args["lr"], args["peft"], args["lora_r"]) == (7e-4, "none", 4)
    assert args["steps"] == recipes.RECIPES["smollm2"]["sft"]["steps"]  # the others stay the recipe's


def test_recipe_none_keeps_the_stage_defaults_on_smollm2():
    args = parse("sft", "--init", "smollm2", "--recipe", "none")
    assert (args["steps"], args["lr"], args["peft"]) == (900, 2e-3, "none")


def test_auto_follows_the_base_chain_of_run_directories(tmp_path):
    sft, dpo, toy = tmp_path / "sft", tmp_path / "dpo", tmp_path / "toy"
    for d, base in ((sft, "smollm2"), (dpo, str(sft)), (toy, None)):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"stage": d.name, "base": base}))
    assert recipes.resolve("auto", dpo) == recipes.resolve("auto", sft) == "smollm2"
    assert recipes.resolve("auto", toy) == recipes.resolve("auto", tmp_path / "missing") == "none"
    assert recipes.resolve("auto", None) == "none"
    assert parse("dpo", "--init", str(dpo))["steps"] == recipes.RECIPES["smollm2"]["dpo"]["steps"]


def test_auto_reads_the_base_from_a_runs_checkpoint_unit(tmp_path):
    # Every stage saves step-N/ + checkpoint.json: the config.json is inside the unit, not beside it.
    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    for d, base in ((sft, "smollm2"), (dpo, str(sft))):
        (d / "step-000030").mkdir(parents=True)
        (d / "step-000030" / "config.json").write_text(json.dumps({"stage": d.name, "base": base}))
        (d / "checkpoint.json").write_text(json.dumps({"current": "step-000030"}))
    assert recipes.resolve("auto", dpo) == recipes.resolve("auto", sft) == "smollm2"
    assert parse("dpo", "--init", str(sft))["peft"] == "lora"


def test_every_recipe_key_is_a_flag_of_its_stage():
    for name, stages in recipes.RECIPES.items():
        for stage, preset in stages.items():
            assert set(preset) <= set(stage_defaults(stage)), (name, stage, set(preset) - set(stage_defaults(stage)))


def test_an_unknown_recipe_is_a_clear_error():
    with pytest.raises(SystemExit, match="--recipe must be one of"):
        parse("sft", "--init", "smollm2", "--recipe", "smol")
