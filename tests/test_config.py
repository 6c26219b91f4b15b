"""train.trainer.config: the recipe's JSON form refuses unknown settings, and the CLI is generated from its fields."""

from dataclasses import fields

import pytest

from train.trainer.config import TrainConfig, argument_parser, config_from_arguments


def test_loading_a_recipe_with_an_unknown_setting_names_it():
    with pytest.raises(ValueError, match="Unknown training setting.*epochz"):
        TrainConfig.from_dict({"epochz": 3})


def test_every_recipe_field_is_an_option_with_its_default():
    parser = argument_parser()
    options = {action.dest: action for action in parser._actions}
    for item in fields(TrainConfig):
        assert item.name in options, item.name
        assert options[item.name].help
    defaults = config_from_arguments(parser.parse_args(["--data", "somewhere"]))
    assert {f.name: getattr(defaults, f.name) for f in fields(TrainConfig) if f.name != "data"} == {
        f.name: getattr(TrainConfig(), f.name) for f in fields(TrainConfig) if f.name != "data"
    }


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--epochs", "3"], {"epochs": 3}),
        (["--no-flip"], {"flip": False}),
        (
            ["--sampling", "class-source", "--class-weights", "none"],
            {"sampling": "class-source", "class_weights": "none"},
        ),
        (["--lr", "1e-3", "--border-crop", "0.05"], {"lr": 1e-3, "border_crop": 0.05}),
        (["--leave-out-source", "nih_cxr14"], {"leave_out_source": "nih_cxr14"}),
    ],
)
def test_options_set_their_fields(argv, expected):
    config = config_from_arguments(argument_parser().parse_args(["--data", "a", "b", *argv]))
    assert {key: getattr(config, key) for key in expected} == expected
    assert len(config.data) == 2


def test_a_choice_outside_the_fields_choices_is_refused(capsys):
    with pytest.raises(SystemExit):
        argument_parser().parse_args(["--data", "a", "--sampling", "random"])
    assert "invalid choice" in capsys.readouterr().err
