"""`parameter_report`: how many parameters train, in total and per group."""
from dataclasses import dataclass, field

from .reference import STAdapterReference
from .validation import check_module


@dataclass
class ParameterReport:
    """Parameter counts of a model. `groups` maps a group name ("adapters", or a top-level child of the
    model for everything else) to (trainable, total)."""

    trainable: int
    total: int
    groups: dict = field(default_factory=dict)

    @property
    def percent(self):
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self):
        lines = [f"{'group':<20}{'trainable':>14}{'total':>14}"]
        lines += [f"{name:<20}{t:>14,}{n:>14,}" for name, (t, n) in self.groups.items()]
        lines.append(f"{'all':<20}{self.trainable:>14,}{self.total:>14,}   ({self.percent:.2f}% trainable)")
        return "\n".join(lines)


def parameter_report(model):
    """Trainable / total parameter counts of `model`, with adapters (every STAdapter or
    STAdapterReference inside it) counted as one group and the rest by top-level child."""
    check_module(model, "parameter_report's model")
    adapter_params = {id(p) for m in model.modules() if isinstance(m, STAdapterReference) for p in m.parameters()}
    groups = {}
    for name, p in model.named_parameters():
        group = "adapters" if id(p) in adapter_params else name.split(".")[0]
        trainable, total = groups.get(group, (0, 0))
        groups[group] = (trainable + p.numel() * p.requires_grad, total + p.numel())
    return ParameterReport(trainable=sum(t for t, _ in groups.values()), total=sum(n for _, n in groups.values()),
                           groups=groups)
