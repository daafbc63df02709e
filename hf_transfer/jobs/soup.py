"""The race's greedy model soup (Wortsman et al. 2022): the fine-tuned finalists' weights averaged where the average
scores at least as well on the held-out part of the training split as the best finalist alone."""

from __future__ import annotations

import numpy as np
import torch


def _average(states: list[dict]) -> dict:
    out = {}
    for key, value in states[0].items():
        if torch.is_floating_point(value):
            out[key] = sum(s[key] for s in states) / len(states)
        else:
            out[key] = value.clone()  # counters (BatchNorm's num_batches_tracked)
    return out


def greedy_soup(race, finalists: list[str], correct: dict[str, np.ndarray]) -> tuple[dict, object | None]:
    """Wortsman et al. 2022: finalists by held-out accuracy; each is added to the average when it does not lower it."""
    order = sorted(finalists, key=lambda n: -float(correct[n].mean()))
    ingredients = [order[0]]
    states = {n: {k: v.detach().clone() for k, v in race.contenders[n].model.state_dict().items()} for n in order}
    best = correct[order[0]]
    best_model = None
    tried = []
    for name in order[1:]:
        candidate, model = race.predict_state(_average([states[n] for n in ingredients + [name]]))
        tried.append({"with": name, "accuracy": round(float(candidate.mean()), 4)})
        if candidate.mean() >= best.mean():
            ingredients.append(name)
            best, best_model = candidate, model
    record = {"ingredients": ingredients, "tried": tried, "accuracy": round(float(best.mean()), 4),
              "winner_accuracy": round(float(correct[order[0]].mean()), 4)}
    return record, (best_model, best) if len(ingredients) > 1 else None
