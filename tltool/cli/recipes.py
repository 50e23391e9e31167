"""``tltool run RECIPE.yaml``."""
from __future__ import annotations

import click


@click.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Set a variable, an option of every step that has it, or COMMAND.KEY / N.KEY for one step.")
@click.option("--from", "start", type=int, default=1, show_default=True, help="First step to run (1-based).")
@click.option("--until", "stop", type=int, default=None, help="Last step to run.")
@click.option("--check", is_flag=True, help="Only check the recipe and print its steps.")
def run_cmd(recipe, overrides, start, stop, check) -> None:
    """Run a YAML recipe of tltool steps (see recipes/); options have the same names as on the command line."""
    from ..recipes import build_argv, load_recipe, recipe_commands, run_recipe

    if check:
        loaded = load_recipe(recipe, overrides)
        commands = recipe_commands()
        for i, step in enumerate(loaded.steps, start=1):
            click.echo(f"{i}. {step.command} {' '.join(build_argv(loaded, i, step, commands[step.command]))}"
                       + ("  (interactive)" if step.interactive else ""))
        return
    run_recipe(recipe, overrides, start=start, stop=stop)


COMMANDS = [run_cmd]
