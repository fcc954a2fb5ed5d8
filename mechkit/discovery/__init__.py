"""Circuit discovery and evaluation on the edge graph of a hooked model.

>>> import mechkit
>>> from mechkit import discovery
>>> scores = discovery.attribute(model, pairs, "eap-ig")              # doctest: +SKIP
>>> circuit = scores.top_edges("5%")                                  # doctest: +SKIP
>>> discovery.evaluate(model, pairs, circuit)                         # doctest: +SKIP
>>> curve = discovery.faithfulness_curve(model, pairs, scores)        # doctest: +SKIP
>>> circuit = mechkit.discover(model, pairs, method="eap-ig", edges=40)  # doctest: +SKIP

Modules: ``graph`` (nodes, edges, dense index), ``forward`` (patched forwards), ``methods``
(registered scorers: eap, eap-ig, eap-ig-activations, exact), ``select``, ``acdc``, ``oracle``, ``evaluate``
(faithfulness, curves, CPR/CMD, robustness), ``ground_truth`` (AUROC, Jaccard), ``convergence`` (EAP-IG's
completeness check), ``roles`` (head-role evidence: attention between positions, induction / duplicate /
previous-token scores, OV copy scores).
"""

from mechkit.discovery.acdc import acdc as acdc
from mechkit.discovery.api import attribute as attribute, discover as discover
from mechkit.discovery.convergence import Convergence as Convergence, IntegrationWarning as IntegrationWarning
from mechkit.discovery.evaluate import (
    MIB_FRACTIONS as MIB_FRACTIONS,
    Curve as Curve,
    cpr_cmd as cpr_cmd,
    evaluate as evaluate,
    faithfulness_curve as faithfulness_curve,
    robustness as robustness,
)
from mechkit.discovery.graph import Graph as Graph
from mechkit.discovery.ground_truth import (
    GroundTruth as GroundTruth,
    auroc as auroc,
    edge_auroc as edge_auroc,
    ground_truth as ground_truth,
    jaccard as jaccard,
    node_auroc as node_auroc,
)
from mechkit.discovery.methods import METHODS as METHODS, register as register
from mechkit.discovery.oracle import OracleResult as OracleResult, oracle as oracle
from mechkit.discovery.scores import EdgeScores as EdgeScores
from mechkit.discovery.select import prune_dangling as prune_dangling
