"""TensorBoard HPARAMS records, written with tensorboard's own protocol buffers (no TensorFlow).

The HPARAMS tab shows one row per *session*: a run folder holding a session-start record (the
hyper-parameter values). Its metric columns are scalar tags declared in an *experiment* record;
the value shown for each is the **last** value of that scalar tag in the session's run. So a row's
metrics can change after the session began: writing the tag again, at a later step, updates the
row. :class:`~wpl_nas.callbacks.TensorBoardCallback` uses this to keep each trial's latest re-score
and forgetting in its row while the candidate stays in the retained pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf import struct_pb2
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

__all__ = ["HParamValue", "experiment_summary", "session_end_summary", "session_start_summary"]

HParamValue = str | bool | int | float


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    data.version = metadata.PLUGIN_DATA_VERSION
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                  content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def _value(value: HParamValue) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=str(value))


def _type(value: HParamValue) -> int:
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, int | float):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def experiment_summary(hparams: Mapping[str, HParamValue], metrics: Mapping[str, str], *,
                       domains: Mapping[str, Sequence[HParamValue]] | None = None,
                       description: str = "") -> Summary:
    """The experiment record: which hyper-parameters (typed like the values of ``hparams``, with
    the discrete ``domains`` given) and which metrics (``{scalar tag: display name}``) the HPARAMS
    table has, in this order."""
    domains = domains or {}
    infos = []
    for name, value in hparams.items():
        info = api_pb2.HParamInfo(name=name, type=_type(value))
        if name in domains:
            info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[_value(v) for v in domains[name]]))
        infos.append(info)
    experiment = api_pb2.Experiment(
        description=description, hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=shown)
                      for tag, shown in metrics.items()])
    return _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def session_start_summary(hparams: Mapping[str, HParamValue], *, start_time_secs: float | None = None) -> Summary:
    """A session's start record: its hyper-parameter values (one row of the HPARAMS table)."""
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=start_time_secs or 0.0)
    for name, value in hparams.items():
        start.hparams[name].CopyFrom(_value(value))
    return _summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start))


def session_end_summary(*, end_time_secs: float | None = None) -> Summary:
    """A session's end record (status: success)."""
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=end_time_secs or 0.0)
    return _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))
