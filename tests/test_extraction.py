"""extract_program on completions shaped like the bundled instruct model's real outputs."""

from types import SimpleNamespace

from ilf import sandbox
from ilf.extraction import extract_program

PROMPT = '"""\nWrite a function to add two numbers.\n\n>>> Example: add(1, 2) = 3\n"""\n\ndef add(a, b):\n'
TASK = SimpleNamespace(prompt=PROMPT, entry_point="add")
TEST = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


def ex(completion: str) -> str:
    return extract_program(TASK, completion)


def test_plain_body_is_kept_exactly():
    prog = ex("    return a + b\n")
    assert prog == PROMPT + "    return a + b\n"
    assert sandbox.check(prog, TEST).passed


def test_example_usage_prints_and_asserts_are_dropped():
    comp = "    return a + b\n\n# Example usage\nprint(add(3, 5))  # 8\nassert add(1, 1) == 2\nresult = add(2, 2)\n"
    prog = ex(comp)
    assert prog == PROMPT + "    return a + b\n"


def test_main_guard_and_markdown_prose_are_dropped():
    comp = (
        "    return a + b\n\n\nif __name__ == '__main__':\n    print(add(1, 2))\n```\n\n"
        "This function takes two arguments `a` and `b` and returns their sum."
    )
    assert ex(comp) == PROMPT + "    return a + b\n"


def test_prose_directly_after_body_is_dropped():
    comp = "    return a + b\n\nThe function above returns the sum of a and b. It works for ints."
    prog = ex(comp)
    assert prog == PROMPT + "    return a + b\n"
    assert sandbox.check(prog, TEST).passed


def test_helper_defined_after_the_function_is_kept_when_used():
    comp = (
        "    return _plus(a, b)\n\ndef _plus(x, y):\n    return x + y\n\ndef unrelated():\n    print('never called')\n\nprint(add(1, 2))\n"
    )
    prog = ex(comp)
    assert "def _plus" in prog and "unrelated" not in prog and "print(add" not in prog
    assert sandbox.check(prog, TEST).passed


def test_constant_used_by_the_function_is_kept_and_test_data_dropped():
    # No stop string cuts this one, so the ast rule alone decides.
    comp = "    return (a + b) % MOD\n\nMOD = 10 ** 9 + 7\ncases = [(1, 2), (3, 4)]\nfor x, y in cases:\n    add(x, y)\n"
    prog = ex(comp)
    assert "MOD = 10 ** 9 + 7" in prog and "cases" not in prog and "for x" not in prog
    assert sandbox.check(prog, TEST).passed


def test_statement_cut_by_the_token_limit_is_dropped():
    comp = "    s = a + b\n    return s\n\ndef other(x):\n    return [x for x in range(10) if x %"
    prog = ex(comp)
    assert prog == PROMPT + "    s = a + b\n    return s\n"


def test_redefinition_of_the_entry_point_is_not_appended():
    comp = "    return a + b\n\ndef add(a, b):\n    return a - b\n"
    prog = ex(comp)
    assert prog.count("def add") == 1 and sandbox.check(prog, TEST).passed


def test_unparseable_completion_falls_back_to_first_unindented_line():
    comp = "    return a +\n\nSome prose here."
    prog = ex(comp)
    assert prog.startswith(PROMPT) and "prose" not in prog
    assert not sandbox.check(prog, TEST).passed


def test_prompt_with_imports_and_helpers_is_kept_whole():
    prompt = '"""\nCount.\n"""\n\nfrom collections import Counter\ndef count_common(words):\n'
    task = SimpleNamespace(prompt=prompt, entry_point="count_common")
    prog = extract_program(task, "    return Counter(words).most_common(4)\n\nprint(count_common(['a']))\n")
    assert prog == prompt + "    return Counter(words).most_common(4)\n"


def test_nested_function_and_multiline_string_survive():
    comp = '    def inner(x):\n        return x\n    doc = """\nnot indented inside a string\n"""\n    return inner(a) + inner(b)\n\nprint(1)\n'  # noqa: E501
    prog = ex(comp)
    assert "not indented inside a string" in prog and "print(1)" not in prog
    assert sandbox.check(prog, TEST).passed


def test_refinement_style_completion_same_rule():
    # pi_Refine continues task.prompt the same way; a refinement with trailing tests is cut the same.
    comp = "    # fixed: return the sum, not the difference\n    return a + b\n\nassert add(2, 2) == 4\n"
    prog = ex(comp)
    assert prog.endswith("    return a + b\n") and sandbox.check(prog, TEST).passed
