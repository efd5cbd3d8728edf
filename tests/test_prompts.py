"""Prompt templates and task specs: loading, rendering, versioning and validation errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lvlmva.errors import ConfigError
from lvlmva.prompts import (
    FAMILIES,
    ROLES,
    PromptTemplate,
    TaskSpec,
    builtin_specs,
    load_prompt_set,
    load_spec,
    parse_spec,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "specs.md"
ENGINE_CRITIC_VARS = {"n_clusters": 3, "colors": "red, blue, green", "image_names": "a, b, c"}


def critic_variables(spec: TaskSpec, class_name: str) -> dict[str, object]:
    return {**spec.variables(class_name), **ENGINE_CRITIC_VARS}


def test_builtin_specs_cover_the_three_tasks():
    assert set(builtin_specs()) >= {"decoy-digits", "skin-lesions", "knee-radiographs"}
    digits = load_spec("decoy-digits")
    assert digits.class_names == tuple(str(d) for d in range(10))
    assert "corner" in digits.notes and "square" in digits.notes
    assert load_spec("skin-lesions").class_names == ("benign", "malignant")
    assert "bandage" in load_spec("skin-lesions").notes
    knee = load_spec("knee-radiographs")
    assert knee.class_names == ("healthy", "osteoarthritis")
    assert '"R"' in knee.notes and '"L"' in knee.notes
    for name in builtin_specs():
        spec = load_spec(name)
        assert spec.family in FAMILIES
        assert all(len(c.description) > 40 for c in spec.classes)


def test_variables_and_class_checks():
    spec = load_spec("skin-lesions")
    v = spec.variables("benign")
    assert set(v) == {"class_name", "class_description", "task_notes"}
    assert v["class_name"] == "benign" and "symmetric" in v["class_description"]
    spec.check_classes(["malignant", "benign"])  # order does not matter
    with pytest.raises(ConfigError, match=r"'nevus'.*no entry"):
        spec.check_classes(["benign", "malignant", "nevus"])
    with pytest.raises(ConfigError, match=r"'malignant'.*not in the data"):
        spec.check_classes(["benign"])
    with pytest.raises(ConfigError, match="'cat'"):
        spec.variables("cat")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_renders_every_role(family):
    prompts = load_prompt_set(family)
    spec = load_spec("knee-radiographs")
    critic = critic_variables(spec, "osteoarthritis")
    judge = {"critique": "CRITIQUE-TEXT", "colors": "red, blue, green", "n_clusters": 3}
    for role in ROLES:
        variables = judge if role.startswith("judge") else critic
        text = getattr(prompts, role).render(variables)
        assert not re.search(r"\$\w", text), f"{family}.{role} left a placeholder"
    user = prompts.critic_user.render(critic)
    assert "osteoarthritis" in user and "red, blue, green" in user and "3 clusters" in user
    assert spec.notes.split()[0] in user
    assert "CRITIQUE-TEXT" in prompts.judge_user.render(judge)


@pytest.mark.parametrize("family", FAMILIES)
def test_templates_say_which_image_is_which_and_what_the_verdicts_mean(family):
    prompts = load_prompt_set(family)
    for role in ("critic_system", "fused_system"):
        text = getattr(prompts, role).text.lower()
        first, second, third = (text.index(k) for k in ("1. the original", "2. the cluster", "3."))
        assert first < second < third
        assert "black" in text and "named colour" in text
        assert '"no"' in text and "even" in text  # a mixed cluster is "no"
    judge = prompts.judge_system.text
    assert '{"output": [{"color":' in judge and '"verdict"' in judge
    assert "exactly one entry" in judge.lower()
    assert "Verdict for <colour>: yes" in prompts.critic_system.text


def test_task_families_override_only_the_domain_prompts():
    generic = load_prompt_set("generic")
    digits = load_prompt_set("decoy-digits")
    assert digits.critic_system.text != generic.critic_system.text
    assert "digit" in digits.critic_system.text
    assert digits.judge_system.text == generic.judge_system.text
    assert digits.sha256 != generic.sha256
    assert len({load_prompt_set(f).sha256 for f in FAMILIES}) == len(FAMILIES)
    assert load_prompt_set("decoy-digits").sha256 == digits.sha256  # stable


def test_template_hash_and_missing_variable():
    a = PromptTemplate("t", "Class $class_name, colours ${colors}, cost $$5")
    b = PromptTemplate("t", "Class $class_name, colours ${colors}, cost $$6")
    assert a.sha256 != b.sha256 and len(a.sha256) == 64
    assert a.variables == {"class_name", "colors"}
    assert a.render({"class_name": "7", "colors": "red", "extra": 1}) == (
        "Class 7, colours red, cost $5"
    )
    with pytest.raises(ConfigError, match=r"'t'.*colors"):
        a.render({"class_name": "7"})
    with pytest.raises(ConfigError, match="malformed placeholder"):
        PromptTemplate("bad", "costs $ 5")


def test_unknown_family_and_user_template_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown prompt family 'nope'.*generic"):
        load_prompt_set("nope")
    (tmp_path / "mine.critic_system.txt").write_text("My critic for $class_name.")
    prompts = load_prompt_set("mine", directory=tmp_path)
    assert prompts.critic_system.render({"class_name": "x"}) == "My critic for x."
    assert prompts.judge_user.text == load_prompt_set("generic").judge_user.text
    assert prompts.sources["critic_system"].endswith("mine.critic_system.txt")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_toml_specs_agree(tmp_path):
    yaml_spec = load_spec(
        write(
            tmp_path,
            "t.yaml",
            "task: t\nfamily: generic\nnotes: a stamp\nclasses:\n"
            "  - name: 0\n    description: round\n  - name: b\n    description: flat\n",
        )
    )
    toml_spec = load_spec(
        write(
            tmp_path,
            "t.toml",
            'task = "t"\nfamily = "generic"\nnotes = "a stamp"\n'
            '[[classes]]\nname = "0"\ndescription = "round"\n'
            '[[classes]]\nname = "b"\ndescription = "flat"\n',
        )
    )
    mapping_spec = load_spec(
        write(tmp_path, "m.yml", "task: t\nnotes: a stamp\nclasses: {'0': round, b: flat}\n")
    )
    assert yaml_spec.class_names == ("0", "b")
    assert yaml_spec.sha256 == toml_spec.sha256 == mapping_spec.sha256
    changed = load_spec(write(tmp_path, "c.yaml", "task: t\nclasses: {'0': oval, b: flat}\n"))
    assert changed.sha256 != yaml_spec.sha256
    assert load_spec(write(tmp_path, "plain.yaml", "classes: {a: x}\n")).task == "plain"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("classes: {a: x}\ncolour: red\n", "unknown key.*colour"),
        ("classes:\n  - name: a\n", "class 'a' has no description"),
        ("classes:\n  - name: a\n    description: '  '\n", "class 'a' has no description"),
        (
            "classes:\n  - name: a\n    description: x\n  - name: a\n    description: y\n",
            "class 'a' is listed twice",
        ),
        ("family: radiology\nclasses: {a: x}\n", "unknown prompt family 'radiology'"),
        ("classes:\n  - name: a\n    descr: x\n", r"classes\[0\] has unknown key.*descr"),
        ("task: t\n", "lists no classes"),
        ("classes: [a, b]\n", r"classes\[0\] must have"),
        ("- just\n- a list\n", "must be a mapping"),
        ("classes: {a: [1, 2]}\n", "must be text"),
        ("classes: {a: x\n", "not valid YAML"),
    ],
)
def test_bad_spec_files_name_the_file_and_the_problem(tmp_path, text, pattern):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_spec(path)
    assert "bad.yaml" in str(info.value)


def test_missing_or_unknown_spec(tmp_path):
    with pytest.raises(ConfigError, match=r"nothere.yaml does not exist"):
        load_spec(tmp_path / "nothere.yaml")
    with pytest.raises(ConfigError, match=r"unknown task spec 'no-such-task'.*decoy-digits"):
        load_spec("no-such-task")
    with pytest.raises(ConfigError, match=r"unknown extension .json"):
        load_spec(write(tmp_path, "s.json", "{}"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_spec(write(tmp_path, "s.toml", "classes = [\n"))


def test_notes_may_be_a_list_and_are_unwrapped():
    spec = parse_spec({"classes": {"a": "x"}, "notes": ["a ruler", "ink  marks"]}, source="inline")
    assert spec.notes == "- a ruler\n- ink marks"
    wrapped = parse_spec({"classes": {"a": "x"}, "notes": "one\ntwo\n\nthree"})
    assert wrapped.notes == "one two\n\nthree"
    assert (
        "No spurious features" in parse_spec({"classes": {"a": "x"}}).variables("a")["task_notes"]
    )


def test_the_examples_in_docs_specs_md_load(tmp_path):
    text = DOCS.read_text()
    blocks = re.findall(r"```(yaml|toml)\n(.*?)```", text, re.S)
    assert {kind for kind, _ in blocks} == {"yaml", "toml"}
    for i, (kind, body) in enumerate(blocks):
        spec = load_spec(write(tmp_path, f"doc{i}.{kind}", body))
        assert spec.class_names == ("normal", "pneumonia")
        assert spec.notes


def test_a_prompt_set_from_texts_needs_every_role_and_versions_them():
    from lvlmva.prompts import ROLES, PromptSet

    texts = {role: f"{role} $colors" for role in ROLES}
    prompts = PromptSet.from_texts("t", texts)
    assert prompts.critic_user.render({"colors": "red"}) == "critic_user red"
    changed = PromptSet.from_texts("t", {**texts, "judge_user": "other $colors"})
    assert changed.sha256 != prompts.sha256
    with pytest.raises(ConfigError, match="fused_user"):
        PromptSet.from_texts("t", {r: t for r, t in texts.items() if r != "fused_user"})
