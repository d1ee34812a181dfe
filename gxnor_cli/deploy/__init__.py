"""Deploy: trained models as files that are really small and cheap to run.

    fold.py         BatchNorm + phi folded into integer thresholds; the packed export
    packed.py       the packed file format: radix-packed states, blobs, validation
    engine.py       the numpy engine that runs a packed file (gemm kernel, gated-XNOR reference)
    onnx_graph.py   a standard ONNX float graph
    qonnx_graph.py  a QONNX graph of the packed arithmetic (Quant, MultiThreshold)
    formats.py      the export formats by name (``FORMATS``)

Import from the modules (this file imports nothing, so a light module of the package
loads without the heavy ones).
"""
