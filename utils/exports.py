"""What each method exports to RUN_DIR/codes.mat and how eval.py reads it.

`directions` maps a direction name to (query field, database field, query
label field, database label field). `distance` is "hamming" for +-1 codes and
"euclidean" for real-valued embeddings (ACMR). `training_codes` names fields that hold codes
of the TRAINING items beside the query and database codes (SSAH's unified code B, kept as the
authors' program keeps it); evaluation does not read them.
"""

CROSS_MODAL_DIRECTIONS = {
    "i->t": ("Qi", "Dt", "query_L", "retrieval_L"),
    "t->i": ("Qt", "Di", "query_L", "retrieval_L"),
    "i->i": ("Qi", "Di", "query_L", "retrieval_L"),
    "t->t": ("Qt", "Dt", "query_L", "retrieval_L"),
}

EXPORTS = {
    "ssah": {"distance": "hamming", "directions": CROSS_MODAL_DIRECTIONS,
             "training_codes": {"B": "sign(H + F + G) of the stored label, image and text hashes"}},
    "acmr": {"distance": "euclidean", "directions": {k: CROSS_MODAL_DIRECTIONS[k] for k in ("i->t", "t->i")}},
    "metah": {"distance": "hamming", "directions": {
        "target->target": ("Q", "Dt", "query_L", "target_L"),
        "target->source": ("Q", "Ds", "query_L", "source_L"),
    }},
}
