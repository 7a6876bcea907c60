"""Graph rewrites, one family per module. Importing this package registers every pass."""

from qonnx.passes import (  # noqa: F401
    calibrate,
    div_to_mul,
    constants_to_initializers,
    convert_float,
    emulate_float,
    finalize,
    float_islands,
    float_sensitivity,
    fold_batchnorm,
    fold_bias_add,
    fold_constants,
    fold_pad,
    infer_shapes,
    inline_functions,
    insert_qdq,
    remove_dead,
    resolve_policy,
    upgrade_opset,
    verify,
)
