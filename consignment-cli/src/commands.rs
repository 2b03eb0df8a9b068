//! What each subcommand does: the calls it makes and what it prints.

use std::path::Path;

use shippy_client::{RequestId, SendOnce, ServiceChannel};
use shippy_proto::consignment::v1 as pb;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_registry::EtcdClient;

use crate::config::{Connection, CreateArgs, ListArgs, ServicesArgs};
use crate::output::{self, Created};
use crate::{Failure, connect, input, services};

type Client = ShippingServiceClient<ServiceChannel>;

/// Consignments asked for per GetConsignments call.
const PAGE_SIZE: i32 = 500;

/// The original CLI's behaviour: submit the file, then list everything.
///
/// When the listing fails after the consignment was stored, the created
/// consignment is still printed, then the listing's error, with exit
/// status 1 (a service failure): never 2, which would tell the user the
/// file was at fault and invite a second submission of the same thing.
pub async fn submit_and_list(args: &CreateArgs) -> Result<(), Failure> {
    let consignment = read_file(&args.file)?;
    let mut client = client(&args.connection).await?;
    let created = create_consignment(&mut client, consignment).await?;
    let all = match get_consignments(&mut client).await {
        Ok(all) => all,
        Err(status) => {
            if args.format.json {
                println!("{}", output::created_json(&created));
            } else {
                print!("{}", output::created(&created));
            }
            return Err(Failure::Service(format!(
                "consignment {} was created, but listing the consignments failed: {}",
                created.consignment.id,
                output::status("GetConsignments", &status)
            )));
        }
    };
    if args.format.json {
        println!("{}", output::submitted_json(&created, &all));
    } else {
        println!("{}", output::created(&created));
        print!("{}", output::listing(&all));
    }
    Ok(())
}

/// `create`: submit the file and print the created consignment.
pub async fn create(args: &CreateArgs) -> Result<(), Failure> {
    let consignment = read_file(&args.file)?;
    let mut client = client(&args.connection).await?;
    let created = create_consignment(&mut client, consignment).await?;
    if args.format.json {
        println!("{}", output::created_json(&created));
    } else {
        print!("{}", output::created(&created));
    }
    Ok(())
}

/// `list`: print every stored consignment.
pub async fn list(args: &ListArgs) -> Result<(), Failure> {
    let mut client = client(&args.connection).await?;
    let all = get_consignments(&mut client)
        .await
        .map_err(|status| Failure::from_status("GetConsignments", &status))?;
    if args.format.json {
        println!("{}", output::listing_json(&all));
    } else {
        print!("{}", output::listing(&all));
    }
    Ok(())
}

/// `services`: print what is registered in etcd, with live health.
pub async fn services(args: &ServicesArgs) -> Result<(), Failure> {
    let registry = &args.registry;
    let mut etcd = EtcdClient::connect(&registry.etcd_endpoints)
        .await
        .map_err(service_failure)?;
    let listed = services::gather(&mut etcd, &registry.key_space(), args.health_timeout())
        .await
        .map_err(|err| {
            Failure::Service(format!(
                "cannot read the registry from etcd at {}: {err:#}",
                registry.etcd_endpoints.join(",")
            ))
        })?;
    if args.format.json {
        println!("{}", output::services_json(&listed));
    } else {
        print!("{}", output::services(&listed));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<pb::Consignment, Failure> {
    input::read_consignment(path).map_err(|err| Failure::BadInput(format!("{err:#}")))
}

async fn client(connection: &Connection) -> Result<Client, Failure> {
    let channel = connect::channel(
        connection.address.as_ref(),
        &connection.service_name,
        &connection.registry,
        connection.timeout(),
    )
    .await
    .map_err(service_failure)?;
    Ok(ShippingServiceClient::new(channel))
}

/// Creates `consignment` under a fresh request id, which the services log
/// and which comes back with the answer. It is sent to a second instance
/// only if the first could not be reached at all, so that it is never
/// stored twice.
async fn create_consignment(
    client: &mut Client,
    consignment: pb::Consignment,
) -> Result<Created, Failure> {
    let request_id = RequestId::generate();
    let mut request = tonic::Request::new(consignment);
    request.extensions_mut().insert(SendOnce);
    request_id.insert_into(request.metadata_mut());
    let response = client
        .create_consignment(request)
        .await
        .map_err(|status| Failure::from_status("CreateConsignment", &status))?;
    let request_id = RequestId::from_metadata(response.metadata()).unwrap_or(request_id);
    let response = response.into_inner();
    let consignment = response
        .consignment
        .filter(|_| response.created)
        .ok_or_else(|| {
            Failure::Service("consignment-service answered without creating the consignment".into())
        })?;
    Ok(Created {
        consignment,
        request_id,
    })
}

/// Every stored consignment, fetched a page at a time. The service ends a
/// page before it would pass gRPC's 4 MiB message limit, however large the
/// consignments, so every page decodes.
async fn get_consignments(client: &mut Client) -> Result<Vec<pb::Consignment>, tonic::Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = tonic::Request::new(pb::GetRequest {
            page_size: PAGE_SIZE,
            page_token,
        });
        let page = client.get_consignments(request).await?.into_inner();
        all.extend(page.consignments);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

fn service_failure(err: anyhow::Error) -> Failure {
    Failure::Service(format!("{err:#}"))
}
