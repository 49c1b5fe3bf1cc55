"""Fine-tuning: which stages train in which epoch, at which learning rate, frozen stages and BatchNorm in eval mode.

The lecture's transfer recipe, as a plan the engine follows:

- ``model.freeze`` freezes the stem and the first stages (or the whole backbone) for the whole run:
  their parameters get ``requires_grad=False`` before the optimiser is built, so they get no
  gradient and no optimiser state.
- ``train.probe_epochs``: the first epochs train the head alone (feature extraction), then every
  stage ``model.freeze`` leaves trainable is unfrozen and fine-tuned. The backbone's parameters are
  in the optimiser from the start but have no gradient during the head-only phase, and torch's
  optimisers keep no state for a parameter without a gradient, so their momentum starts at the
  switch. The phase is a function of the epoch, so a resumed run is in the same phase as an
  uninterrupted one.
- ``optim.backbone_lr_mult`` (the lecture's "1/10 of the original learning rate") scales the rate
  of every weight ``model.init_from`` loaded but the classifier: every stage below the head, and the
  head's own hidden layers (lenet5's, alexnet's and vgg's fully connected layers, googlenet's auxiliary
  heads); ``optim.layer_decay`` gives the stage k steps below the head ``layer_decay ** k`` of the rate
  (the stem is the lowest).
- A stage that does not train in an epoch (``model.freeze``, and the backbone during the head-only
  phase) runs in inference mode: its dropout and stochastic depth are off, as at test time, so the
  layers above it learn from the features evaluation gives them (Keras's transfer guide calls its
  frozen base with ``training=False`` for the same reason). Only its BatchNorm layers follow
  ``train.bn_eval``.
- ``train.bn_eval``: BatchNorm layers that normalise with their running statistics while training
  (and leave them unchanged): ``all`` of them, or those in ``frozen`` stages (``model.freeze``, and
  the backbone during the head-only phase). A frozen stage whose BatchNorm layers still train moves
  its running statistics with every batch, so its features drift although its weights do not.

The stages are :func:`cnnlab.models.stages.model_stages`: ``stem``, ``stage1`` .. ``stageN``, ``head``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import nn

from cnnlab.config import RunConfig, ScheduleConfig

PROBE_PHASE = "probe"  # the head-only epochs of train.probe_epochs
FINE_TUNE_PHASE = "fine-tune"  # every stage model.freeze leaves trainable


@dataclass
class FineTunePlan:
    """What trains when, from a run's config and its model's stages (see the module docstring)."""

    stages: list[str]  # the model's stage names, stem first, head last
    frozen: list[str]  # stages model.freeze freezes for the whole run
    probe_epochs: int  # the first epochs train only the head
    bn_eval: str  # off | all | frozen
    modules: dict[str, tuple[str, ...]]  # stage name -> the dotted names of its submodules
    fixed: tuple[str, ...] = ()  # dotted parameter names that never train, whatever the phase (model.whiten=frozen[_block])

    @property
    def head(self) -> str:
        return self.stages[-1]

    @property
    def head_first(self) -> str:
        """The head-only epochs in words: "the first epoch", "the first 38 epochs" (not "the first 1 epoch")."""
        return "the first epoch" if self.probe_epochs == 1 else f"the first {self.probe_epochs} epochs"

    def phase(self, epoch: int) -> str:
        """The phase of 0-based ``epoch``: PROBE_PHASE during the head-only epochs, else FINE_TUNE_PHASE."""
        return PROBE_PHASE if epoch < self.probe_epochs else FINE_TUNE_PHASE

    def trainable(self, epoch: int) -> list[str]:
        """The stages whose parameters train in 0-based ``epoch``."""
        if self.phase(epoch) == PROBE_PHASE:
            return [self.head]
        return [name for name in self.stages if name not in self.frozen]

    def eval_bn_stages(self, epoch: int) -> list[str]:
        """The stages whose BatchNorm layers run in eval mode during ``epoch`` (train.bn_eval)."""
        if self.bn_eval == "all":
            return list(self.stages)
        if self.bn_eval == "frozen":
            trainable = self.trainable(epoch)
            return [name for name in self.stages if name not in trainable]
        return []

    def schedule_span(self, total_steps: int, steps_per_epoch: int) -> tuple[int, int]:
        """(first step, steps) the learning-rate schedule runs over: the fine-tuning phase.

        The head-only epochs train at the peak rate; the schedule (warmup, decay, cycles) then runs
        over the fine-tuning epochs, as a run of that length would.
        """
        start = self.probe_epochs * steps_per_epoch
        return start, total_steps - start

    def lr_factor(self, schedule: ScheduleConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
        """The factor of the peak learning rate at 0-based ``step`` (see :meth:`schedule_span`)."""
        from cnnlab.train.schedule import lr_factor

        start, length = self.schedule_span(total_steps, steps_per_epoch)
        if step < start:
            return 1.0
        return lr_factor(schedule, step - start, length, steps_per_epoch)

    def apply(self, model: nn.Module, epoch: int) -> None:
        """Put ``model`` in training mode for ``epoch``: requires_grad per stage, the stages that do not train
        in inference mode (dropout and stochastic depth off), BatchNorm modes per bn_eval.

        Call it wherever the model would be put in training mode (``model.train()`` alone would undo
        these modes, and evaluation calls ``model.eval()`` in between).
        """
        from cnnlab.models.stages import set_requires_grad

        model.train()
        trainable = self.trainable(epoch)
        held = [name for name in self.stages if name not in trainable]
        set_requires_grad(model, trainable, True)
        set_requires_grad(model, held, False)
        self.fix_parameters(model)
        eval_bn = self.eval_bn_stages(epoch)
        for stage in held:
            # A stage that does not train is a fixed feature extractor: its dropout and stochastic depth (and
            # any other layer that acts differently while training) run as at test time, so the layers that
            # train above it learn from the features evaluation gives them. Its BatchNorm layers are the one
            # exception, left to train.bn_eval below: whether their statistics follow the new data is a choice.
            for name in self.modules[stage]:
                model.get_submodule(name).eval()
                if stage not in eval_bn:
                    for module in _batch_norms(model.get_submodule(name)):
                        module.train()  # batch statistics, as with the stage trainable (train.bn_eval off)
        for stage in eval_bn:
            for name in self.modules[stage]:
                for module in _batch_norms(model.get_submodule(name)):
                    module.eval()  # normalise with the running statistics and leave them unchanged


    def fix_parameters(self, model: nn.Module) -> None:
        """``requires_grad=False`` for the :attr:`fixed` parameters (after the stages have been set)."""
        for name in self.fixed:
            model.get_parameter(name).requires_grad_(False)


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers in ``module`` (SyncBatchNorm too), itself included."""
    return [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]


def fine_tune_plan(model: nn.Module, config: RunConfig, fixed: tuple[str, ...] = ()) -> FineTunePlan:
    """The plan for ``model`` under ``config``; a CnnlabError naming the model's stages for a bad model.freeze.
    ``fixed``: parameters that never train (what model.whiten=frozen or frozen_block keeps fixed)."""
    from cnnlab.models.stages import frozen_stage_names, model_stages

    stages = model_stages(model)
    return FineTunePlan(stages=[stage.name for stage in stages],
                        frozen=frozen_stage_names(model, config.model.freeze),
                        probe_epochs=config.train.probe_epochs, bn_eval=config.train.bn_eval,
                        modules={stage.name: stage.modules for stage in stages}, fixed=tuple(fixed))


def stage_lr_scales(plan: FineTunePlan, config: RunConfig) -> dict[str, float]:
    """Stage name -> the factor of the peak learning rate its parameters train at.

    The head trains at the peak rate. A stage k steps below it gets ``layer_decay ** k``, times
    ``backbone_lr_mult`` when the run starts from weights (model.init_from): the pretrained backbone
    moves more slowly than the new head. (:func:`parameter_lr_scales` slows the pretrained layers
    inside the head as well.)
    """
    optim = config.optim
    pretrained = config.model.init_from is not None
    scales = {}
    for depth, name in enumerate(reversed(plan.stages)):  # head first: depth 0
        scale = optim.layer_decay ** depth
        if depth > 0 and pretrained:
            scale *= optim.backbone_lr_mult
        scales[name] = scale
    return scales


def parameter_lr_scales(model: nn.Module, plan: FineTunePlan, config: RunConfig, *,
                        pretrained_head: bool = True) -> dict[int, float]:
    """``id(parameter)`` -> its learning-rate factor, for build_optimizer: its stage's
    (:func:`stage_lr_scales`), times ``backbone_lr_mult`` for a head parameter outside the classifier
    when the run starts from weights.

    ``pretrained_head=False`` gives the factors of earlier cnnlab versions, which trained every head
    parameter at the head's rate (see :func:`groups_before_head_rates`).

    The head stage can hold more than the classifier: lenet5's, alexnet's and vgg's hidden fully connected
    layers, googlenet's auxiliary heads, convnext's last norm. model.init_from loads those like the stages
    below, so they are pretrained weights and move at the pretrained rate; only the classifier (the layers
    whose size follows the class count) trains at the head's rate.
    """
    from cnnlab.models.stages import stage_of_parameters

    by_stage = stage_lr_scales(plan, config)
    stage_of = stage_of_parameters(model)
    pretrained = config.model.init_from is not None
    classifier = classifier_parameter_names(model) if pretrained else set()
    scales = {}
    for name, param in model.named_parameters():
        scale = by_stage[stage_of[name]]
        if pretrained and pretrained_head and stage_of[name] == plan.head and name not in classifier:
            scale *= config.optim.backbone_lr_mult
        scales[id(param)] = scale
    return scales



def classifier_parameter_names(model: nn.Module) -> set[str]:
    """The names of the classifier's parameters (the layers whose size follows the class count), as
    ``model.named_parameters()`` names them: the only head parameters that never come pretrained."""
    from cnnlab.models.stages import classifier_names

    return {f"{layer}.{name}" for layer in classifier_names(model)
            for name, _ in model.get_submodule(layer).named_parameters()}


def groups_before_head_rates(model: nn.Module, plan: FineTunePlan, config: RunConfig) -> Optional[list[int]]:
    """The sizes of the optimiser's parameter groups as earlier cnnlab versions built them for this run, when
    they differ from this version's; else None.

    Earlier versions trained the head's pretrained layers (the head's parameters outside the classifier:
    lenet5's, alexnet's and vgg's hidden fully connected layers, googlenet's auxiliary heads, convnext's last
    norm) at optim.lr; this one trains them at optim.backbone_lr_mult times it, so a run that starts from
    weights with a multiplier other than 1 gets other groups. Counted over the parameters that train now
    (``requires_grad``: call it where the optimiser is built, after model.freeze). A checkpoint whose
    optimiser groups have these sizes was saved by such a run, and its state cannot continue in this
    version's groups (:func:`cnnlab.train.checkpoint.load_checkpoint` says so).
    """
    from cnnlab.train.optim import muon_weight_ids, param_groups

    optim = config.optim
    muon = muon_weight_ids(model) if optim.name == "muon" else None

    def sizes(pretrained_head: bool) -> list[int]:
        scales = parameter_lr_scales(model, plan, config, pretrained_head=pretrained_head)
        return [len(group["params"])
                for group in param_groups(model, optim.weight_decay, optim.no_decay_norm_bias, scales, muon)]

    before = sizes(pretrained_head=False)
    return before if before != sizes(pretrained_head=True) else None


def checkpoint_predates_head_rates(path) -> bool:
    """Whether the checkpoint at ``path`` (a run's last.safetensors, with its optimiser state) was trained by an
    earlier cnnlab at the head rates :func:`groups_before_head_rates` describes: its optimiser groups have the
    sizes that version built for the run's recorded model and config, not this version's. False for a
    checkpoint without optimiser state, or one whose config trains the same groups in both versions."""
    from cnnlab.models.stages import set_requires_grad
    from cnnlab.run import MetaKey, build_model
    from cnnlab.train.checkpoint import optimizer_group_sizes, read_model_meta

    meta, config = read_model_meta(path)
    if config.model.init_from is None or config.optim.backbone_lr_mult == 1.0:
        return False  # every head parameter trains at optim.lr in both versions
    saved = optimizer_group_sizes(path)  # from the header: the optimiser's state tensors are not read
    if saved is None:
        return False
    model = build_model(config.model, num_classes=meta[MetaKey.NUM_CLASSES], in_chans=meta[MetaKey.IN_CHANS],
                        name=meta[MetaKey.MODEL])
    plan = fine_tune_plan(model, config)
    set_requires_grad(model, plan.frozen, False)  # as the run set it before building its optimiser
    before = groups_before_head_rates(model, plan, config)
    return before is not None and saved == before


def unused_fine_tune_settings(model: nn.Module, plan: FineTunePlan, config: RunConfig,
                              optimizer: torch.optim.Optimizer) -> list[str]:
    """A note for each fine-tuning setting that changes nothing in this run (or, for train.probe_epochs, not
    what it is for), said once when the run starts: the run trains all the same, so none is refused.
    ``optimizer``: the run's, built with :func:`parameter_lr_scales` (its groups are what trains, at which rate).

    - ``train.bn_eval`` (all or frozen) on a model without BatchNorm layers;
    - ``train.bn_eval=frozen`` with no stage frozen (no model.freeze, no train.probe_epochs): every
      BatchNorm layer trains, as with ``off``;
    - ``train.probe_epochs`` without model.init_from: the head learns from a random backbone's features,
      not from pretrained ones;
    - ``optim.backbone_lr_mult`` where no pretrained weight trains: model.freeze freezes every stage below
      the head, and the head holds only its classifier (which trains at optim.lr). Without model.init_from
      the multiplier is refused (:func:`cnnlab.config.validate_config`);
    - ``optim.layer_decay`` where it changes no rate (:func:`unused_layer_decay`, from the optimiser's groups):
      model.freeze=backbone leaves only the head to train, and the head's factor is ``layer_decay ** 0``.
    """
    from cnnlab.models.stages import classifier_names, stage_of_parameters

    notes = []
    t, optim = config.train, config.optim
    if plan.bn_eval != "off" and not _batch_norms(model):
        notes.append(f"train.bn_eval={plan.bn_eval} does nothing in this run: the model has no BatchNorm layer, "
                     "whose running statistics it would keep.")
    elif plan.bn_eval == "frozen" and not plan.frozen and not plan.probe_epochs:
        notes.append("train.bn_eval=frozen does nothing in this run: no stage is frozen (model.freeze is not set and "
                     "train.probe_epochs is 0), so every BatchNorm layer trains as with train.bn_eval=off. Set "
                     "model.freeze or train.probe_epochs, or train.bn_eval=all to keep every BatchNorm layer's "
                     "running statistics.")
    if t.probe_epochs and config.model.init_from is None:
        notes.append(f"train.probe_epochs={t.probe_epochs} trains only the {plan.head} for {plan.head_first}, "
                     "but model.init_from is not set: the "
                     "backbone holds random weights, so the head learns from random features that the fine-tuning "
                     "epochs then change. The head-only phase is for weights a run starts from: set model.init_from, "
                     "or leave train.probe_epochs at 0.")
    if optim.backbone_lr_mult != 1.0 and config.model.init_from is not None:
        stage_of = stage_of_parameters(model)
        trained = set(plan.trainable(plan.probe_epochs))  # the fine-tuning phase: every stage that trains at all
        classifier = classifier_parameter_names(model)
        pretrained = [name for name, _ in model.named_parameters()
                      if stage_of[name] in trained and name not in classifier and name not in plan.fixed]
        if not pretrained:
            notes.append(f"optim.backbone_lr_mult={optim.backbone_lr_mult:g} does nothing in this run: it scales the "
                         "rate of the pretrained weights that train, but model.freeze="
                         f"{config.model.freeze} freezes every stage below the {plan.head}, and the {plan.head} holds "
                         f"only the classifier ({', '.join(classifier_names(model))}), which trains at optim.lr. "
                         "Leave optim.backbone_lr_mult at 1, or freeze fewer stages.")
    layer_decay = unused_layer_decay(model, plan, config, optimizer)
    if layer_decay:
        notes.append(layer_decay)
    return notes


def unused_layer_decay(model: nn.Module, plan: FineTunePlan, config: RunConfig,
                       optimizer: torch.optim.Optimizer) -> Optional[str]:
    """The note for an ``optim.layer_decay`` that changes no learning rate in this run, else None.

    Read from the groups the optimiser was built with (the parameters that train at some point, each group
    with its ``lr_scale``): the setting does nothing when every one of those parameters has the factor it
    would have at layer_decay=1. The factor is ``layer_decay ** k`` for a stage k steps below the head, so
    that is when only the head's parameters train.
    """
    optim = config.optim
    if optim.layer_decay == 1.0:
        return None
    without = parameter_lr_scales(model, plan, replace(config, optim=replace(optim, layer_decay=1.0)))
    trained = [(param, group["lr_scale"]) for group in optimizer.param_groups for param in group["params"]]
    if any(scale != without[id(param)] for param, scale in trained):
        return None
    # Every stage below the head has a factor layer_decay ** k < 1 of its own, so the parameters that train
    # are all in the head.
    why = f" (model.freeze={config.model.freeze} freezes {', '.join(plan.frozen)})" if plan.frozen else ""
    return (f"optim.layer_decay={optim.layer_decay:g} does nothing in this run: it gives the stage k steps below "
            f"the {plan.head} layer_decay ** k of the rate, but only the {plan.head} trains{why}, where k is 0, "
            "so every rate is the one it would be without it. Leave optim.layer_decay at 1"
            + (", or freeze fewer stages." if plan.frozen else "."))
