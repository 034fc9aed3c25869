"""Reading the YAML files users give (machines, policies, scenarios): one place
that turns an unreadable file or bad YAML into the caller's error, naming the
file and the line."""

from __future__ import annotations


def load_yaml(path, where: str, error: type[Exception]):
    """yaml.safe_load() of path; `error` names `where` (and the line) on failure."""
    import yaml

    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise error(f"{where}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise error(f"{where}{line}: not valid YAML: {problem}") from None
