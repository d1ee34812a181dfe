"""Deploy: trained models as files that are really small and cheap to run.

    fold.py         BatchNorm + phi folded into integer thresholds; the packed export of a layer net
    fold_graph.py   the packed export of a run: an own network as a graph (format version 3)
    packed.py       the packed file format: radix-packed states, blobs, validation
    packed_graph.py the format's graph form (version 3): ops and validation
    engine.py       the engine that runs a packed layer net (onnxruntime, gemm, gated-XNOR reference)
    graph_engine.py the engine that runs a packed graph (numpy); ``load_packed`` opens either
    onnx_graph.py   a standard ONNX float graph
    qonnx_graph.py  a QONNX graph of the packed arithmetic (Quant, MultiThreshold)
    formats.py      the export formats by name (``FORMATS``)

Import from the modules (this file imports nothing, so a light module of the package
loads without the heavy ones).
"""
